"""Running one inversion method on its own (`arpo invert --method pez|ph2p|editor|regressor`).

No graph and no brain: the method recovers a prompt, its trajectory goes into the history as it is
made, the prompt is rendered once with the run's seed and stored as iteration 0 (with CLIP-T and
CLIP-I, like a loop iteration), and the run is finished with that prompt as its result.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from arpo.storage.records import InversionStepRecord, IterationRecord

if TYPE_CHECKING:
    from arpo.graphs.context import ArpoContext
    from arpo.graphs.invocation import RunHandle
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
) -> InversionResult:
    """Run `inverter` on a run's reference, storing its trajectory under the run (used by --init too)."""
    reference = context.reference(reference_sha256)
    recorder = TrajectoryRecorder(context.history, run_id, inverter.name, also=on_step)
    try:
        result = inverter.invert(reference.image, context.models, seed=seed, on_step=recorder)
    finally:
        recorder.flush()
    if result.rendered is not None:  # PH2P rendered its winner with this seed while choosing it
        context.hand_over_render(result.prompt, seed, result.rendered)
    return result


def run_inversion(handle: RunHandle, *, on_step: Callable[[InversionStep], None] | None = None) -> InversionResult:
    """Execute a `--method` run to its end: invert, render, score, record, finish."""
    from arpo.graphs.invocation import failures_recorded
    from arpo.tools.inversion.registry import build_inverter

    context, config = handle.context, handle.config
    history = context.history
    detail = history.get_run(handle.run_id)
    with failures_recorded(history, handle.run_id):
        inverter = build_inverter(config.method, config)
        result = invert_with(inverter, context, handle.run_id, detail.reference_sha256, config.seed, on_step=on_step)
        record = _iteration_zero(context, detail.reference_sha256, result, config.seed)
        history.record_iteration(handle.run_id, record)
    history.finish_run(
        handle.run_id,
        best_prompt=result.prompt,
        best_clip_i=record.clip_i,
        last_prompt=result.prompt,
        stopped_because=_stop_sentence(result),
    )
    return result


def _iteration_zero(context: ArpoContext, reference_sha256: str, result: InversionResult, seed: int) -> IterationRecord:
    """The recovered prompt rendered with the run's seed and scored both ways, as iteration 0."""
    from arpo.graphs.nodes import iteration_record, render_and_score

    scored = render_and_score(context, reference_sha256, result.prompt, seed, method=result.method)
    record = iteration_record(context, {"iteration": 0, "prompt": result.prompt, **scored})
    summary = f"{result.method}: {len(result.steps)} step(s) in {result.seconds:.1f} s"
    note = "; ".join(part for part in (summary, record.note) if part)
    return record.model_copy(update={"note": note, "wall_seconds": result.seconds})


def _stop_sentence(result: InversionResult) -> str:
    why = result.details.get("stopped_because")
    return f"{result.method} finished ({why})" if why else f"{result.method} finished"
