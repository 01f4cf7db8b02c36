"""Calling an inversion method on a run's reference, with its trajectory stored under the run as it
is made: for `--init` (the loop's first prompt) and for `--method` runs alike.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from arpo.storage.records import InversionStepRecord

if TYPE_CHECKING:
    from arpo.graphs.context import ArpoContext
    from arpo.storage.history import History
    from arpo.tools.inversion.base import InversionResult, InversionStep, PromptInverter

FLUSH_EVERY = 50
"""Trajectory steps written to the history per transaction (thousands of PEZ steps, few writes)."""


class TrajectoryRecorder:
    """An `on_step` callback that stores an inverter's steps in the history, in batches."""

    def __init__(self, history: History, run_id: str, method: str, *, also: Callable[[InversionStep], None] | None = None):
        self.history = history
        self.run_id = run_id
        self.method = method
        self.also = also
        self._pending: list[InversionStepRecord] = []

    def __call__(self, step: InversionStep) -> None:
        self._pending.append(
            InversionStepRecord(
                method=self.method,
                step=step.step,
                loss=step.loss,
                prompt=step.prompt,
                seconds=step.seconds,
                details=step.details or None,
            )
        )
        if len(self._pending) >= FLUSH_EVERY:
            self.flush()
        if self.also is not None:
            self.also(step)

    def flush(self) -> None:
        if self._pending:
            self.history.record_inversion_steps(self.run_id, self._pending)
            self._pending = []


def invert_with(
    inverter: PromptInverter,
    context: ArpoContext,
    run_id: str,
    reference_sha256: str,
    seed: int,
    *,
    on_step: Callable[[InversionStep], None] | None = None,
    trajectory: str | None = None,
) -> InversionResult:
    """Run `inverter` on a run's reference, storing its trajectory under the run (used by --init too).

    `trajectory` names the stored trajectory (default: the method's name); a refinement names its own,
    so a run's several refinements with one method keep one trajectory each. The render of the
    method's winner is handed on only when the trajectory is the method's own (its winner becomes the
    next prompt: --init, --method), not for a refinement, whose winner only supplies phrases.
    """
    reference = context.reference(reference_sha256)
    recorder = TrajectoryRecorder(context.history, run_id, trajectory or inverter.name, also=on_step)
    try:
        result = inverter.invert(reference.image, context.models, seed=seed, on_step=recorder)
    finally:
        recorder.flush()
    if result.rendered is not None and trajectory is None:  # PH2P rendered its winner with this seed
        context.hand_over_render(result.prompt, seed, result.rendered)
    return result
