"""Budget keeping and step recording shared by every inverter.

An inverter asks `TrajectoryTracker` whether it may take another step, and hands it each step's loss
and prompt; the tracker stamps the wall time, keeps the list and forwards each step to `on_step`.
"""

from __future__ import annotations

import time
from typing import Any

from arpo.tools.inversion.base import InversionBudget, InversionStep, OnStep


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
