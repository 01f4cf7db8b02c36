"""Decisions between nodes: one small router per branch point."""

from __future__ import annotations

from typing import Literal

from arpo.graphs.state import ArpoRouting


def after_generate(state: ArpoRouting) -> Literal["compare", "finish"]:
    """The last generation only scores the final prompt; otherwise look for differences."""
    return "finish" if state.get("stopped_because") else "compare"


def after_select(state: ArpoRouting) -> Literal["generate", "refine", "finish"]:
    """Render the new prompt; when selection kept nothing (Algorithm 8's empty ΔP), refine first if a
    refinement is due, else stop."""
    if state.get("refine_with"):
        return "refine"
    return "finish" if state.get("stopped_because") else "generate"


def after_refine(state: ArpoRouting) -> Literal["generate", "finish"]:
    """Render what the refinement kept; stop when it kept nothing either."""
    return "finish" if state.get("stopped_because") else "generate"


# The session graph (a person reviews every regenerated image)


def after_review(state: ArpoRouting) -> Literal["compare", "generate", "review", "refine", "finish"]:
    """Follow the person's reply: carry on, render their prompt, refine, ask again, or finish."""
    return state.get("next_step") or "compare"  # type: ignore[return-value]


def after_session_select(state: ArpoRouting) -> Literal["generate", "refine", "review"]:
    """A round that kept nothing is refined when a refinement is due, then goes back to the person,
    who may steer it, instead of ending."""
    if state.get("refine_with"):
        return "refine"
    return "review" if state.get("stopped_because") else "generate"


def after_session_refine(state: ArpoRouting) -> Literal["generate", "review"]:
    """Render what the refinement kept; with nothing kept, ask the person."""
    return "review" if state.get("stopped_because") else "generate"


# Agent mode (graphs/agent_nodes.py): the agent drives until it ends; a prompt it changed but did not
# render is rendered first; then the run finishes, the fixed loop goes on, or (in a session) the person
# is asked.


def after_agent(state: ArpoRouting) -> Literal["agent", "generate", "compare", "finish"]:
    """Another turn while the agent drives; once it has ended, render its last prompt if needed, then
    finish, or go on as the fixed loop when it gave up."""
    if not state.get("agent_ended"):
        return "agent"
    if state["prompt"] != state.get("rendered_prompt"):
        return "generate"
    return "finish" if state.get("stopped_because") else "compare"


def after_agent_generate(state: ArpoRouting) -> Literal["agent", "compare", "finish"]:
    """The first render goes to the agent; after the agent, a render ends the run or feeds the fixed loop."""
    if state.get("stopped_because"):
        return "finish"
    return "compare" if state.get("agent_ended") else "agent"


def after_session_agent(state: ArpoRouting) -> Literal["agent", "generate", "review"]:
    """Another turn while the agent drives; once it has ended, the person takes over (after the render
    of its last prompt, when it changed one)."""
    if not state.get("agent_ended"):
        return "agent"
    return "generate" if state["prompt"] != state.get("rendered_prompt") else "review"


def after_session_agent_generate(state: ArpoRouting) -> Literal["agent", "review"]:
    """The first render goes to the agent; every render after it has ended goes to the person."""
    return "review" if state.get("agent_ended") or state.get("stopped_because") else "agent"
