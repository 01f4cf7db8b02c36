"""Choosing the brains for a run: a vision-language model and a language model, or none (offline).

One vLLM server can serve both roles, so when the two configurations are identical a single backend
(and a single call log) is shared.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from arpo.agents.backend import BackendConfig, BrainCallRecord, ChatBackend
from arpo.errors import InvalidInputError

BrainProvider = Literal["openai", "vllm", "offline"]

DEFAULT_MODELS: dict[str, dict[str, str]] = {
    "openai": {"vlm": "gpt-4o", "llm": "gpt-4o"},
    "vllm": {"vlm": "Qwen/Qwen2.5-VL-7B-Instruct", "llm": "Qwen/Qwen2.5-VL-7B-Instruct"},
}


@dataclass
class Brains:
    """The backends a run talks to; None means that brain is offline (no model is called)."""

    vlm: ChatBackend | None
    llm: ChatBackend | None

    def describe_backends(self) -> dict[str, dict | None]:
        """Provider, model, URL and capabilities of each brain, safe to store (no keys)."""
        return {
            "vlm": self.vlm.config.safe_description() if self.vlm else None,
            "llm": self.llm.config.safe_description() if self.llm else None,
        }

    def drain_calls(self) -> list[BrainCallRecord]:
        """Records of every call since the last drain, from both brains, oldest first."""
        backends = {id(backend): backend for backend in (self.vlm, self.llm) if backend is not None}
        records = [record for backend in backends.values() for record in backend.call_log.drain()]
        return sorted(records, key=lambda record: record.started_at)


def build_brains(
    vlm_provider: BrainProvider,
    llm_provider: BrainProvider,
    *,
    vlm_model: str | None = None,
    llm_model: str | None = None,
    base_url: str | None = None,
    vlm_base_url: str | None = None,
    llm_base_url: str | None = None,
) -> Brains:
    """Backends for the chosen providers; a model or URL left as None takes the provider default.

    `base_url` applies to both brains unless `vlm_base_url` / `llm_base_url` override it.
    Raises InvalidInputError for an unknown provider and BrainError when a needed key is missing.
    """
    vlm_config = _config_for(vlm_provider, "vlm", vlm_model, vlm_base_url or base_url)
    llm_config = _config_for(llm_provider, "llm", llm_model, llm_base_url or base_url)
    vlm = ChatBackend(vlm_config) if vlm_config else None
    if llm_config is not None and llm_config == vlm_config:
        llm = vlm
    else:
        llm = ChatBackend(llm_config) if llm_config else None
    return Brains(vlm=vlm, llm=llm)


def _config_for(
    provider: str, brain: Literal["vlm", "llm"], model: str | None, base_url: str | None
) -> BackendConfig | None:
    if provider == "offline":
        return None
    if provider not in DEFAULT_MODELS:
        raise InvalidInputError(
            f"unknown {brain} provider {provider!r}; choose openai, vllm or offline"
        )
    return BackendConfig.from_provider(
        provider, model or DEFAULT_MODELS[provider][brain], base_url=base_url
    )
