"""Run-scoped dependencies of the ARPO graph: models, brains and history, injected at invoke time.

Nothing here is checkpointed. A resumed run builds a new context from the run's stored configuration;
the reference image's embedding and pixels are cached here, so each is computed once per process.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Literal

from arpo.core.run_config import RunConfig
from arpo.graphs.telemetry import CounterSnapshot, LoopTelemetry

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from arpo.agents.brains import Brains
    from arpo.agents.offline_proposer import OfflineProposer
    from arpo.agents.prompt_compressor import PromptCompressor
    from arpo.agents.roles import Comparer, Describer, Differ, LlmProposer
    from arpo.storage.history import History
    from arpo.tools.inversion.base import PromptInverter
    from arpo.tools.model_stack import ModelStack

Framework = Literal["vanilla", "enhanced"]


@dataclass
class ReferenceView:
    """The reference image of a run, with its CLIP embedding."""

    sha256: str
    image: Image.Image
    embedding: torch.Tensor


@dataclass
class ArpoContext:
    """Everything a node needs besides the state."""

    models: ModelStack
    """Text-to-image model, CLIP scorer and captioner."""
    history: History
    """Where runs, iterations, images and brain calls are kept."""
    brains: Brains
    """The VLM and LLM brains; either may be None (offline)."""
    framework: Framework = "vanilla"
    """Vanilla: one two-image VLM comparison. Enhanced: describe each image, then an LLM compares."""
    telemetry: LoopTelemetry = field(default_factory=LoopTelemetry)
    initial_inverter: PromptInverter | None = None
    """Writes P0 when no initial prompt is given (`--init pez|ph2p|editor|regressor`); None: the captioner."""
    config: RunConfig | None = None
    """The run's configuration (refinement, budgets); None for a context built by hand, which refines
    and budgets as the defaults say."""
    pause_requests: set[str] = field(default_factory=set, repr=False)
    """Sessions whose person asked, while they ran unattended (`run N`), to be asked again at the next
    review instead of going on (`SessionDriver.request_pause`)."""
    _references: dict[str, ReferenceView] = field(default_factory=dict, repr=False)
    _reference_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _handed_renders: dict[tuple[str, int], Image.Image] = field(default_factory=dict, repr=False)

    def reference(self, sha256: str) -> ReferenceView:
        """Reference pixels and embedding, computed on first use only."""
        with self._reference_lock:
            if sha256 not in self._references:
                image = self.history.open_image(sha256)
                embedding = self.models.clip.named_image_embedding(image, sha256)
                self._references[sha256] = ReferenceView(sha256, image, embedding)
            return self._references[sha256]

    def hand_over_render(self, prompt: str, seed: int, image: Image.Image) -> None:
        """Keep an image an inverter already rendered for `prompt` with `seed`, for the next node that
        would render exactly that (the text-to-image model is deterministic per prompt and seed)."""
        self._handed_renders[(prompt, int(seed))] = image

    def take_render(self, prompt: str, seed: int) -> Image.Image | None:
        """The handed-over image for `prompt` and `seed`, once (None if there is none)."""
        return self._handed_renders.pop((prompt, int(seed)), None)

    @property
    def uses_vlm(self) -> bool:
        return self.brains.vlm is not None

    @cached_property
    def comparer(self) -> Comparer:
        from arpo.agents.roles import Comparer

        return Comparer(self.brains.vlm)

    @cached_property
    def describer(self) -> Describer:
        from arpo.agents.roles import Describer

        return Describer(self.brains.vlm)

    @cached_property
    def differ(self) -> Differ:
        from arpo.agents.roles import Differ

        return Differ(self.brains.llm)

    @cached_property
    def llm_proposer(self) -> LlmProposer:
        from arpo.agents.roles import LlmProposer

        return LlmProposer(self.brains.llm)

    @cached_property
    def prompt_compressor(self) -> PromptCompressor:
        from arpo.agents.prompt_compressor import PromptCompressor

        return PromptCompressor(self.brains.llm)

    @cached_property
    def offline_proposer(self) -> OfflineProposer:
        from arpo.agents.offline_proposer import OfflineProposer

        return OfflineProposer(self.models.clip)

    def budget_spent(self, run_id: str, seconds_spent: float) -> str | None:
        """Why the run must stop for its budgets (`--max-seconds`, `--max-brain-tokens`), or None."""
        config = self.config or RunConfig()
        if config.max_seconds is not None and seconds_spent >= config.max_seconds:
            return f"reached the time budget ({config.max_seconds:g} s)"
        if config.max_brain_tokens is not None:
            spent = self.history.brain_tokens(run_id)
            if spent >= config.max_brain_tokens:
                return f"reached the brain-token budget ({config.max_brain_tokens} tokens; {spent} spent)"
        return None

    def save_brain_calls(self, run_id: str, iteration: int | None) -> None:
        """Move the brain calls made since the last save into the history (and the telemetry)."""
        calls = self.brains.take_calls()
        for call in calls:
            self.telemetry.add_brain_call(call.started_at, call.latency_s)
        if calls:
            self.history.record_brain_calls(run_id, iteration, calls)

    def counters(self) -> CounterSnapshot:
        """Cumulative model and brain counters, for the telemetry."""
        models = self.models
        model_seconds = sum(
            component.forward_seconds for component in (models.text_to_image, models.clip, models.captioner)
        )
        return CounterSnapshot(
            model_seconds=model_seconds,
            clip_text_passes=models.clip.text_forward_passes,
        )
