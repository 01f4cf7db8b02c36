"""The session's one extra node: `review`, where the loop pauses and a person decides how it goes on.

`review` shows the person the regenerated image, the current and best prompts and the candidates
that led here, waits for a `HumanTurn` through LangGraph's `interrupt()`, stores the reply in the
history and turns it into a state update. LangGraph re-runs the node from the top when the session
resumes, so everything before `interrupt()` only reads.
"""

from __future__ import annotations

from langgraph.runtime import Runtime
from langgraph.types import interrupt

from arpo.core.phrases import has_phrase, join_prompt, phrase_key
from arpo.graphs.context import ArpoContext
from arpo.graphs.human_turn import HumanTurn
from arpo.graphs.state import ArpoState
from arpo.storage.records import SessionTurnRecord

STOPPED_BY_PERSON = "stopped by the person"
PAUSED_BY_PERSON = "you asked to pause"


def review(state: ArpoState, runtime: Runtime[ArpoContext]) -> dict:
    """Ask the person how to go on, unless they asked for several iterations without being asked."""
    ctx = runtime.context
    if state.get("unattended_left", 0) > 0 and not state.get("stopped_because"):
        if state["run_id"] in ctx.pause_requests:  # asked to stop going on: review again, now asking
            ctx.pause_requests.discard(state["run_id"])
            return {"unattended_left": 0, "next_step": "review", "stopped_because": PAUSED_BY_PERSON}
        return {"unattended_left": state["unattended_left"] - 1, "next_step": "compare"}
    ctx.pause_requests.discard(state["run_id"])  # a request made while already waiting is answered
    shown = review_payload(state, ctx)
    turn = HumanTurn.model_validate(interrupt(shown))
    position = state.get("turns", 0)
    ctx.history.record_session_turn(
        state["run_id"],
        SessionTurnRecord(
            position=position,
            iteration_index=state["iteration"],
            action=turn.action,
            text=turn.text,
            phrases=turn.phrases or None,
            shown=shown,
        ),
    )
    return {"turns": position + 1, **apply_turn(state, turn)}


def review_payload(state: ArpoState, ctx: ArpoContext) -> dict:
    """What the person sees at a pause, as plain JSON values (it is stored with their reply)."""
    index = state["iteration"]
    candidates = _latest_candidates(ctx, state["run_id"], index)
    return {
        "run_id": state["run_id"],
        "iteration": index,
        "prompt": state["prompt"],
        "generated_sha256": state["generated_sha256"],
        "reference_sha256": state["reference_sha256"],
        "clip_i": state["clip_i"],
        "clip_t": state["clip_t"],
        "best_prompt": state.get("best_prompt", state["prompt"]),
        "best_clip_i": state.get("best_clip_i"),
        "best_iteration": state.get("best_iteration", index),
        "candidates": candidates,
        "notice": _notice(state.get("stopped_because", "")),
        "pinned": list(state.get("pinned", [])),
        "banned": list(state.get("banned", [])),
    }


def _latest_candidates(ctx: ArpoContext, run_id: str, index: int) -> list[dict]:
    """The round that just ran: this iteration's when it kept nothing, else the one that led here."""
    records = {record.index: record for record in ctx.history.iterations(run_id)}
    for candidate_index in (index, index - 1):
        record = records.get(candidate_index)
        if record is not None and record.candidates:
            return [candidate.model_dump() for candidate in record.candidates]
    return []


def _notice(stopped_because: str) -> str | None:
    # Every pause is already a question, so the step limit is no news; a round that kept nothing is.
    if not stopped_because or stopped_because.startswith("reached the step limit"):
        return None
    return stopped_because


def apply_turn(state: ArpoState, turn: HumanTurn) -> dict:
    """The state update one reply makes; `next_step` tells the router where the session goes."""
    if turn.action == "stop":
        return {"stopped_because": STOPPED_BY_PERSON, "next_step": "finish"}
    if turn.action == "refine":
        return {"refine_with": turn.tool, "next_step": "refine", "stopped_because": ""}
    if turn.action in ("continue", "feedback"):
        return _carry_on(state, turn)
    if turn.action == "edit":
        return _new_prompt(state, with_pinned(turn.text or "", state.get("pinned", [])))
    if turn.action == "pin":
        pinned = _merged(state.get("pinned", []), turn.phrases)
        prompt = with_pinned(state["prompt"], pinned)
        update = {"pinned": pinned, "banned": _without(state.get("banned", []), turn.phrases)}
        return update | (_new_prompt(state, prompt) if prompt != state["prompt"] else {"next_step": "review"})
    if turn.action == "unpin":
        return {"pinned": _without(state.get("pinned", []), turn.phrases), "next_step": "review"}
    # ban
    return {
        "banned": _merged(state.get("banned", []), turn.phrases),
        "pinned": _without(state.get("pinned", []), turn.phrases),
        "next_step": "review",
    }


def with_pinned(prompt: str, pinned: list[str]) -> str:
    """The prompt with every pinned phrase that it lacks appended (whole-word match, any case)."""
    missing = [phrase for phrase in pinned if not has_phrase(prompt, phrase)]
    return join_prompt(prompt, missing)


def _carry_on(state: ArpoState, turn: HumanTurn) -> dict:
    index = state["iteration"]
    update: dict = {"stopped_because": "", "next_step": "compare", "unattended_left": turn.iterations - 1}
    if index + turn.iterations > state["max_steps"]:
        # The step limit bounds unattended runs; a person asking for more extends it.
        update["max_steps"] = index + turn.iterations
    if turn.action == "feedback":
        update["feedback"] = list(state.get("feedback", [])) + [turn.text]
    return update


def _new_prompt(state: ArpoState, prompt: str) -> dict:
    index = state["iteration"] + 1
    update = {"prompt": prompt, "iteration": index, "stopped_because": "", "next_step": "generate"}
    if index > state["max_steps"]:
        update["max_steps"] = index
    return update


def _merged(existing: list[str], added: list[str]) -> list[str]:
    keys = {phrase_key(phrase) for phrase in existing}
    merged = list(existing)
    for phrase in added:
        if phrase_key(phrase) not in keys:
            merged.append(phrase)
            keys.add(phrase_key(phrase))
    return merged


def _without(existing: list[str], removed: list[str]) -> list[str]:
    keys = {phrase_key(phrase) for phrase in removed}
    return [phrase for phrase in existing if phrase_key(phrase) not in keys]
