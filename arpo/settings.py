"""Defaults for the command line, read from ARPO_* environment variables; flags override them."""

from __future__ import annotations

from typing import Literal

from pydantic_settings import BaseSettings, SettingsConfigDict

from arpo.graphs.run_config import BrainProvider


class ArpoSettings(BaseSettings):
    """Per-user defaults. API keys are not settings: they stay in OPENAI_API_KEY / VLLM_API_KEY."""

    model_config = SettingsConfigDict(env_prefix="ARPO_", extra="ignore")

    db: str | None = None
    """History database URL (default: sqlite file under ARPO_HOME, ~/.local/share/arpo)."""
    models: str = "sd15"
    brain: BrainProvider = "openai"
    base_url: str | None = None
    vlm: str | None = None
    llm: str | None = None
    framework: Literal["vanilla", "enhanced"] = "vanilla"
    steps: int = 10
    seed: int = 0
    scheduler: Literal["ddim", "pndm", "euler", "euler-a", "dpm++"] | None = None
    """Noise scheduler of the text-to-image model (None: the model's own)."""
    dtype: Literal["float32", "float16", "bfloat16"] | None = None
    """Precision of the models (None: float16 on CUDA, float32 elsewhere)."""
    structured_output: Literal["auto", "json-schema", "json-object", "off"] = "auto"
    max_tokens: int | None = None
    """Reply budget of every brain request (None: each role's default)."""
    temperature: float | None = None
    """Brain sampling temperature (None: the backend's default, 0.2)."""
    brain_seed: int | None = None
    """Brain sampling seed (None: the backend's default, 0)."""
