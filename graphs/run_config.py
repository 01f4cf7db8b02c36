"""The configuration of one run: what the CLI was asked for, stored with the run so it can resume.

It names models and brains only. API keys are read from the environment when brains are built and
are never part of this object, so they cannot reach the history or the checkpoints.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

BrainProvider = Literal["openai", "vllm", "offline"]


class BrainChoice(BaseModel):
    """Which backend plays one brain role."""

    provider: BrainProvider = "offline"
    model: str | None = None
    """Model name on that backend; None takes the provider's default."""
    base_url: str | None = None
    """Server URL for vLLM (or an OpenAI-compatible proxy); None takes the provider's default."""
    structured_output: Literal["auto", "json-schema", "json-object", "off"] = "auto"
    """How JSON replies are asked for: auto negotiates json_schema > json_object > plain text."""
    max_tokens: int | None = Field(None, ge=1)
    """Reply budget of every request of this brain; None takes each role's default."""
    temperature: float | None = Field(None, ge=0, le=2)
    """Sampling temperature sent with every request; None takes the backend's default (0.2)."""
    seed: int | None = None
    """Sampling seed sent with every request; None takes the backend's default (0)."""


class RunConfig(BaseModel):
    """Everything that determines a run, besides the reference image."""

    models: str = "sd15"
    """Model stack: tiny, sd15, sdxl, pixart, or a diffusers model id or local path."""
    clip_model: str | None = None
    """open_clip model for selection and scoring, as NAME/PRETRAINED; None takes the stack's default."""
    captioner: str | None = None
    """Captioner model id for the initial prompt; None takes the stack's default."""
    device: str | None = None
    """Torch device; None picks the best available."""
    scheduler: Literal["ddim", "pndm", "euler", "euler-a", "dpm++"] | None = None
    """Noise scheduler of the text-to-image model; None keeps the model's own (PNDM for SD 1.5, Euler
    for SDXL, DPM-Solver++ for PixArt-α). The names are tools/schedulers.SCHEDULER_NAMES."""
    dtype: Literal["float32", "float16", "bfloat16"] | None = None
    """Precision the three models load in; None: float16 on CUDA, float32 elsewhere."""
    vlm: BrainChoice = Field(default_factory=BrainChoice)
    llm: BrainChoice = Field(default_factory=BrainChoice)
    framework: Literal["vanilla", "enhanced"] = "vanilla"
    steps: int = Field(10, ge=0, le=1000)
    seed: int = 0
    initial_prompt: str | None = None
    """Start from this prompt instead of a caption (or another `init` method)."""
    method: Literal["arpo", "pez", "ph2p", "editor", "regressor"] = "arpo"
    """What recovers the prompt: the ARPO loop, or one inversion method on its own (no brain)."""
    init: Literal["caption", "pez", "ph2p", "editor", "regressor"] = "caption"
    """How the ARPO loop writes its initial prompt P0 when `initial_prompt` is not given."""
    inversion_steps: int | None = Field(None, ge=1)
    """Optimisation steps for an inversion method (None: the method's default)."""
    inversion_seconds: float | None = Field(None, gt=0)
    """Wall-time limit for an inversion method (None: no limit)."""
    editor_inverter: str | None = None
    """Trained embedding-to-text inverter (folder) for EDITOR; None: EDITOR's training-free search."""
    regressor: str | None = None
    """Regressor checkpoint (file or folder) for `init`/`method` "regressor"."""
    prompt_bank: str | None = None
    """File of prompts the regressor's embedding is matched against (None: the checkpoint's own bank)."""
