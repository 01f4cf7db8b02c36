"""Running one inversion method on its own (`arpo invert --method pez|ph2p|editor|regressor`).

No graph and no brain: the method recovers a prompt, its trajectory goes into the history as it is
made, the prompt is rendered once with the run's seed and stored as iteration 0 (with CLIP-T and
CLIP-I, like a loop iteration), and the run is finished with that prompt as its result.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from arpo.graphs.failures import failures_recorded
from arpo.graphs.inverter_calls import invert_with
from arpo.graphs.iterations import iteration_record, render_and_score
from arpo.storage.records import IterationRecord

if TYPE_CHECKING:
    from arpo.graphs.context import ArpoContext
    from arpo.graphs.invocation import RunHandle
    from arpo.tools.inversion.base import InversionResult, InversionStep


def run_inversion(handle: RunHandle, *, on_step: Callable[[InversionStep], None] | None = None) -> InversionResult:
    """Execute a `--method` run to its end: invert, render, score, record, finish."""
    from arpo.tools.inverters import build_inverter

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
    scored = render_and_score(context, reference_sha256, result.prompt, seed, method=result.method)
    record = iteration_record(context, {"iteration": 0, "prompt": result.prompt, **scored})
    summary = f"{result.method}: {len(result.steps)} step(s) in {result.seconds:.1f} s"
    note = "; ".join(part for part in (summary, record.note) if part)
    return record.model_copy(update={"note": note, "wall_seconds": result.seconds})


def _stop_sentence(result: InversionResult) -> str:
    why = result.details.get("stopped_because")
    return f"{result.method} finished ({why})" if why else f"{result.method} finished"
