"""What the CLI shows: progress lines while a run goes, and its result as text or JSON."""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from arpo.storage.history import History
    from arpo.storage.records import IterationRecord, RunDetail, RunSummary, ToolCallRecord

TINY_MODELS_NOTE = "note: --models tiny runs tiny random models offline; the recovered prompt is meaningless as a prompt."
COMPILE_NOTE = "note: --compile: the first render waits while torch.compile builds the denoiser (a minute or more on a CPU)."


def model_notes(models, compiled: bool) -> list[str]:
    """What a person should know about the loaded models before the first line of progress."""
    return [note for note, applies in ((TINY_MODELS_NOTE, models.is_tiny), (COMPILE_NOTE, compiled)) if applies]


def progress_line(node: str, update: dict) -> str | None:
    """One line of progress for a node's state update, or None when there is nothing to say."""
    if node == "initialize" and "prompt" in update:
        return f"initial prompt: {update['prompt']}"
    if node == "generate" and "clip_i" in update:
        best = "  (best so far)" if "best_prompt" in update else ""
        return f"generated image: CLIP-I {update['clip_i']:.4f}  CLIP-T {update['clip_t']:.4f}{best}"
    if node == "propose":
        return _proposal_progress(update)
    if node == "select":
        if update.get("refine_with"):
            return f"  no candidate kept; refining the best prompt with {update['refine_with']}"
        if "prompt" in update:
            return f"iteration {update['iteration']}: {update['prompt']}"
        return "  no candidate kept"
    if node == "refine":
        if "prompt" in update:
            return f"refined, iteration {update['iteration']}: {update['prompt']}"
        return "  refining kept nothing"
    if node == "agent":  # one line per call the agent made this turn
        return "\n".join(update.get("agent_report") or []) or None
    if node == "finish":
        return f"stopped: {update.get('stopped_because', '')}"
    return None


def _proposal_progress(update: dict) -> str:
    proposal = update.get("proposal") or {}
    line = f"  {len(update.get('candidates', []))} candidate phrase(s) proposed"
    if proposal.get("source") == "offline-fallback":
        line += " by the phrase banks (the LLM's replies held no usable phrase)"
    if proposal.get("dropped"):
        line += f"; {len(proposal['dropped'])} dropped (see arpo history)"
    return line


def print_progress(node: str, update: dict) -> None:
    line = progress_line(node, update)
    if line:
        print(line, file=sys.stderr, flush=True)


def run_result(detail: RunDetail, history: History, out_dir: Path | None = None) -> dict:
    """The run as one JSON-ready object; images are copied into ``out_dir`` when given."""
    iterations = []
    for record in detail.iterations_detail:
        image_path = history.image_path(record.generated_sha256)
        if out_dir is not None:
            image_path = _copy_into(image_path, out_dir / f"iteration-{record.index:03d}.png")
        iterations.append(
            {
                "index": record.index,
                "prompt": record.prompt,
                "seen_prompt": record.seen_prompt,
                "token_count": record.token_count,
                "candidates": [c.model_dump() for c in record.candidates],
                "selected": record.selected,
                "clip_t": record.clip_t,
                "clip_i": record.clip_i,
                "image": str(image_path),
                "note": record.note,
                "candidate_source": record.proposal.source if record.proposal else None,
                "dropped": [d.model_dump() for d in record.proposal.dropped] if record.proposal else [],
                "refinement": record.refinement,
                "compression": record.compression,
            }
        )
    best = best_so_far(detail)
    result = {
        "run_id": detail.id,
        "status": detail.status,
        "prompt": best.prompt if best else None,
        "best_clip_i": best.clip_i if best else None,
        "last_prompt": detail.last_prompt,
        "stopped_because": detail.stopped_because,
        "error": detail.error,
        "reference": detail.reference_name,
        "iterations": iterations,
        "brain_calls": detail.brain_calls,
        "tokens": {"prompt": detail.prompt_tokens, "completion": detail.completion_tokens},
    }
    if detail.config.get("agent"):
        result["agent_steps"] = [call.model_dump(mode="json") for call in agent_steps(history, detail.id)]
    if detail.kind == "session":
        result["turns"] = [
            turn.model_dump(mode="json", exclude={"shown"}) for turn in history.session_turns(detail.id)
        ]
        result["renders"] = [
            render.model_dump(mode="json") | {"image": str(history.image_path(render.image_sha256))}
            for render in history.renders(detail.id)
        ]
    if out_dir is not None:
        (out_dir / "result.json").write_text(json.dumps(result, indent=2))
    return result


@dataclass(frozen=True)
class BestPrompt:
    """The best prompt of a run: the one it finished with, or the best scored before it stopped."""

    prompt: str
    clip_i: float | None
    iteration: int | None = None
    """The iteration it was found in when it comes from a run that did not finish (else None)."""


def best_so_far(detail: RunDetail) -> BestPrompt | None:
    """The run's best prompt; for a run that failed or stopped early, its best scored iteration (by
    CLIP-I, the earliest of equals, as the loop chooses); None when nothing was scored."""
    if detail.best_prompt is not None:
        return BestPrompt(detail.best_prompt, detail.best_clip_i)
    best = best_scored(detail.iterations_detail)
    return None if best is None else BestPrompt(best.prompt, best.clip_i, best.index)


def best_scored(records: Iterable[IterationRecord]) -> IterationRecord | None:
    """The iteration with the highest CLIP-I, the earliest of equals, as the loop chooses; None when
    there is none (for runs whose best is not stored yet: paused, failed or cut off)."""
    return max(records, key=lambda record: (record.clip_i, -record.index), default=None)


def _tool_lines(record: IterationRecord) -> list[str]:
    """A compression and a refinement of the iteration, one line each."""
    lines = []
    if record.compression:
        squeeze = record.compression
        verdict = "kept" if squeeze.get("accepted") else "not kept"
        lines.append(
            f"     compressed ({squeeze.get('method')}, {verdict}): {squeeze.get('before_tokens')} -> "
            f"{squeeze.get('after_tokens')} tokens, CLIP-T {squeeze.get('before_score', 0):.4f} -> "
            f"{squeeze.get('after_score', 0):.4f}: {squeeze.get('after')}"
        )
    if record.refinement:
        refined = record.refinement
        kept = ", ".join(refined.get("kept") or []) or "nothing"
        lines.append(
            f"     refined with {refined['tool']} ({refined.get('seconds', 0):.1f} s): "
            f"{len(refined.get('proposed') or [])} phrase(s) proposed, kept {kept}"
        )
    return lines


def agent_steps(history: History, run_id: str) -> list[ToolCallRecord]:
    """The agent's own steps in a run, in the order it took them (empty for the fixed loop)."""
    return [call for call in history.tool_calls(run_id) if call.is_agent_step]


def _agent_step_line(call: ToolCallRecord) -> str:
    """One agent step for a person: the call with its arguments, and what came of it."""
    arguments = ", ".join(f"{name}={_shortened(value)}" for name, value in call.arguments.items()
                          if value not in ("", [], None))
    head = f"     agent: {call.tool}({arguments})"
    outcome = call.outcome or {}
    if call.error:
        return f"{head}: {call.error}"
    if "notice" in outcome:
        return f"{head}: {outcome['notice']}"
    if "clip_i" in outcome:
        return f"{head}: iteration {outcome.get('iteration')}, CLIP-I {outcome['clip_i']:.4f}"
    if "kept" in outcome:
        return f"{head}: {len(call.proposed)} phrase(s), kept {', '.join(call.kept) or 'nothing'}"
    if "candidates" in outcome:
        return f"{head}: {len(call.proposed)} candidate(s): {_shortened(call.proposed, 120)}"
    return f"{head}: {outcome['prompt']}" if "prompt" in outcome else head


def _shortened(value: object, limit: int = 60) -> str:
    text = ", ".join(map(str, value)) if isinstance(value, list) else str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _best_prompt_line(detail: RunDetail) -> str:
    best = best_so_far(detail)
    if best is None:
        return "best prompt: none (no iteration was scored)"
    if best.iteration is None:
        return f"best prompt: {best.prompt}"
    return f"best prompt so far (iteration {best.iteration}, CLIP-I {best.clip_i:.4f}): {best.prompt}"


def _copy_into(source: Path, target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    return target


def _proposal_lines(record) -> list[str]:
    """Where a round's candidates came from (when not the configured proposer) and what was dropped,
    counted by reason."""
    proposal = record.proposal
    if proposal is None:
        return []
    lines = []
    if proposal.source == "offline-fallback":
        lines.append("     candidates from the offline phrase banks (the LLM's replies were unusable)")
    by_reason: dict[str, list[str]] = {}
    for dropped in proposal.dropped:
        by_reason.setdefault(dropped.reason, []).append(dropped.phrase)
    for reason, phrases in by_reason.items():
        shown = ", ".join(f'"{phrase}"' for phrase in phrases)
        lines.append(f"     - dropped {len(phrases)} ({reason}): {shown}")
    return lines


def summary_text(result: dict) -> str:
    """The end of a run, for a person."""
    lines = [
        f"run {result['run_id']}: {result['stopped_because']}",
        f"best prompt (CLIP-I {result['best_clip_i']:.4f}):",
        f"  {result['prompt']}",
    ]
    if result["last_prompt"] != result["prompt"]:
        lines += ["last prompt:", f"  {result['last_prompt']}"]
    return "\n".join(lines)


def runs_table(runs: list[RunSummary]) -> str:
    if not runs:
        return "no runs yet"
    header = f"{'run':12}  {'created':19}  {'status':11}  {'iters':>5}  {'CLIP-I':>6}  reference / best prompt"
    rows = [header]
    for run in runs:
        clip_i = f"{run.best_clip_i:.3f}" if run.best_clip_i is not None else "-"
        rows.append(
            f"{run.id:12}  {run.created_at:%Y-%m-%d %H:%M:%S}  {run.status:11}  {run.iterations:>5}  {clip_i:>6}  "
            f"{run.reference_name}: {run.best_prompt or ''}"
        )
    return "\n".join(rows)


def iterations_text(detail: RunDetail, history: History | None = None) -> str:
    """A run's iterations for a person; a session's replies appear where they were given."""
    lines = [f"run {detail.id} ({detail.status}) on {detail.reference_name}: {detail.stopped_because or ''}".rstrip()]
    if detail.error and detail.status in ("failed", "interrupted"):
        lines.append(f"{detail.status}: {detail.error}")
    turns = history.session_turns(detail.id) if history is not None and detail.kind == "session" else []
    steps = agent_steps(history, detail.id) if history is not None and detail.config.get("agent") else []
    for record in detail.iterations_detail:
        lines.append(f"[{record.index}] CLIP-I {record.clip_i:.4f}  CLIP-T {record.clip_t:.4f}  {record.prompt}")
        for candidate in record.candidates:
            mark = "+" if candidate.selected else " "
            score = f"{candidate.score:.4f}" if candidate.score is not None else "  -   "
            lines.append(f"     {mark} {score}  {candidate.phrase}  ({candidate.reason})")
        lines += _proposal_lines(record)
        lines += _tool_lines(record)
        lines += [_agent_step_line(step) for step in steps if step.iteration_index == record.index]
        if record.note:
            lines.append(f"     note: {record.note}")
        for turn in (t for t in turns if t.iteration_index == record.index):
            said = turn.text or ", ".join(turn.phrases or [])
            lines.append(f"     you: {turn.action}{': ' + said if said else ''}")
    lines.append(_best_prompt_line(detail))
    return "\n".join(lines)
