"""Choosing the brains for a run: a vision-language model and a language model, or none (offline).

One vLLM server can serve both roles, so when the two configurations are identical a single backend
(and its one record of calls) is shared. Backends of one run share one `FormatMemory`, so a response
format refused by a server and model is not asked for again by the other role.

Only `build_brains` knows that a brain is a `ChatBackend`; everything else sees the `Brain` protocol
(agents/brain.py), so a test can hand a run fakes instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from arpo.agents.backend import BackendConfig, ChatBackend, FormatMemory
from arpo.agents.brain import Brain
from arpo.core.brain_calls import BrainCallRecord
from arpo.core.run_config import BrainProvider
from arpo.core.errors import InvalidInputError


DEFAULT_MODELS: dict[str, dict[str, str]] = {
    "openai": {"vlm": "gpt-4o", "llm": "gpt-4o"},
    "vllm": {"vlm": "Qwen/Qwen2.5-VL-7B-Instruct", "llm": "Qwen/Qwen2.5-VL-7B-Instruct"},
}


@dataclass
class Brains:
    """The brains a run talks to; None means that brain is offline (no model is called)."""

    vlm: Brain | None
    llm: Brain | None

    def describe_backends(self) -> dict[str, dict | None]:
        """Provider, model, URL and capabilities of each brain, safe to store (no keys)."""
        return {
            "vlm": self.vlm.describe() if self.vlm else None,
            "llm": self.llm.describe() if self.llm else None,
        }

    def take_calls(self) -> list[BrainCallRecord]:
        """Records of every request since the last take, from both brains, oldest first.

        One brain serving both roles is asked once, so its records are not counted twice.
        """
        brains = {id(brain): brain for brain in (self.vlm, self.llm) if brain is not None}
        records = [record for brain in brains.values() for record in brain.take_calls()]
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
    vlm_options: dict[str, Any] | None = None,
    llm_options: dict[str, Any] | None = None,
) -> Brains:
    """Backends for the chosen providers; a model or URL left as None takes the provider default.

    `base_url` applies to both brains unless `vlm_base_url` / `llm_base_url` override it.
    `vlm_options` / `llm_options` are further BackendConfig fields (structured_output, max_tokens,
    temperature, seed, ...); a None value takes the backend's default.
    Raises InvalidInputError for an unknown provider or option and BrainError when a needed key is
    missing.
    """
    vlm_config = _config_for(vlm_provider, "vlm", vlm_model, vlm_base_url or base_url, vlm_options)
    llm_config = _config_for(llm_provider, "llm", llm_model, llm_base_url or base_url, llm_options)
    formats = FormatMemory()
    vlm = ChatBackend(vlm_config, formats) if vlm_config else None
    if llm_config is not None and llm_config == vlm_config:
        llm = vlm
    else:
        llm = ChatBackend(llm_config, formats) if llm_config else None
    return Brains(vlm=vlm, llm=llm)


def build_run_brains(vlm: Any, llm: Any) -> Brains:
    """Backends for a run's two brain choices (`arpo.core.run_config.BrainChoice`)."""
    return build_brains(
        vlm.provider,
        llm.provider,
        vlm_model=vlm.model,
        llm_model=llm.model,
        vlm_base_url=vlm.base_url,
        llm_base_url=llm.base_url,
        vlm_options=tuning_of(vlm),
        llm_options=tuning_of(llm),
    )


def tuning_of(choice: Any) -> dict[str, Any]:
    """The BackendConfig options a brain choice sets (structured output, budget, sampling)."""
    return {name: getattr(choice, name, None) for name in _TUNING_FIELDS}


_TUNING_FIELDS = ("structured_output", "max_tokens", "temperature", "seed")


def _config_for(
    provider: str,
    brain: Literal["vlm", "llm"],
    model: str | None,
    base_url: str | None,
    options: dict[str, Any] | None,
) -> BackendConfig | None:
    if provider == "offline":
        return None
    if provider not in DEFAULT_MODELS:
        raise InvalidInputError(
            f"unknown {brain} provider {provider!r}; choose openai, vllm or offline"
        )
    given = {name: value for name, value in (options or {}).items() if value is not None}
    try:
        return BackendConfig.from_provider(
            provider, model or DEFAULT_MODELS[provider][brain], base_url=base_url, **given
        )
    except TypeError as exc:  # an option BackendConfig does not have
        raise InvalidInputError(f"unknown {brain} brain option: {exc}") from None
