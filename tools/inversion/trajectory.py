"""Budget keeping and step recording shared by every step-by-step inverter.

An inverter asks `TrajectoryTracker` whether it may take another step, and hands it each step's loss
and prompt; the tracker stamps the wall time, keeps the list and forwards each step to `on_step`.
`BudgetedInverter` is the one `invert` of the inverters that work under such a budget (PEZ, PH2P,
EDITOR): it settles which budget applies, and each method supplies only its own work.
"""

from __future__ import annotations

import functools
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, ContextManager

from arpo.tools.inversion.base import InversionBudget, InversionResult, InversionStep, OnStep

if TYPE_CHECKING:
    from PIL import Image

    from arpo.tools.model_stack import ModelStack


class TrajectoryTracker:
    """Steps taken so far, against a step limit and a wall-time limit."""

    def __init__(self, budget: InversionBudget, default_steps: int, on_step: OnStep | None = None):
        self.max_steps = budget.max_steps or default_steps
        self.max_seconds = budget.max_seconds
        self.on_step = on_step
        self.steps: list[InversionStep] = []
        self.started = time.perf_counter()

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.started

    @property
    def taken(self) -> int:
        return len(self.steps)

    def may_continue(self) -> bool:
        """False once the step limit is reached or the time limit has passed."""
        if self.taken >= self.max_steps:
            return False
        return self.max_seconds is None or self.seconds < self.max_seconds

    def seconds_left(self) -> float | None:
        if self.max_seconds is None:
            return None
        return max(0.0, self.max_seconds - self.seconds)

    def record(self, loss: float | None, prompt: str | None, **details: Any) -> InversionStep:
        step = InversionStep(
            step=self.taken,
            loss=None if loss is None else float(loss),
            prompt=prompt,
            seconds=self.seconds,
            details=details,
        )
        self.steps.append(step)
        if self.on_step is not None:
            self.on_step(step)
        return step

    def stop_reason(self) -> str:
        if self.taken >= self.max_steps:
            return f"step limit ({self.max_steps})"
        if self.max_seconds is not None and self.seconds >= self.max_seconds:
            return f"time limit ({self.max_seconds:g} s)"
        return "converged"


StartTracking = Callable[[], TrajectoryTracker]
"""Starts the clock of an inversion's budget and returns its tracker."""


@dataclass
class BudgetedInverter(ABC):
    """The `PromptInverter` interface for a method that optimises step by step within a budget."""

    budget: InversionBudget = field(default_factory=InversionBudget)
    """Applies when `invert` is given none."""
    default_steps: ClassVar[int]
    """The method's step limit when the budget sets none (its paper's default)."""

    def invert(
        self,
        reference: Image.Image,
        models: ModelStack,
        *,
        seed: int = 0,
        budget: InversionBudget | None = None,
        on_step: OnStep | None = None,
    ) -> InversionResult:
        start_tracking = functools.partial(TrajectoryTracker, budget or self.budget, self.default_steps, on_step)
        with self._held_models(models):
            return self._invert(reference, models, seed, start_tracking)

    @abstractmethod
    def _held_models(self, models: ModelStack) -> ContextManager[None]:
        """The turn on the accelerator the method holds from its first step to its result: the models
        it differentiates through must not be sent home between a forward pass and its backward pass
        (tools/accelerator_turns.py; a no-op unless the stack was built for --low-vram)."""

    @abstractmethod
    def _invert(
        self, reference: Image.Image, models: ModelStack, seed: int, start_tracking: StartTracking
    ) -> InversionResult:
        """The method's own work. It calls `start_tracking` where its time limit starts counting: each
        method decides which of its setup (encoding the reference, loading models) the budget covers."""


class PipelineInverter(BudgetedInverter):
    """A method that differentiates through the diffusion pipeline (PH2P, EDITOR): it holds the whole
    pipeline's turn on the accelerator, since its backward pass runs through the text encoder after
    the UNet."""

    def _held_models(self, models: ModelStack) -> ContextManager[None]:
        return models.text_to_image.whole_pipeline_turn()
