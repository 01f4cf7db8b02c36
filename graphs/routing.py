"""Decisions between nodes: one small router per branch point."""

from __future__ import annotations

from typing import Literal

from arpo.graphs.state import ArpoState


def after_generate(state: ArpoState) -> Literal["compare", "finish"]:
    """The last generation only scores the final prompt; otherwise look for differences."""
    return "finish" if state.get("stopped_because") else "compare"


def after_select(state: ArpoState) -> Literal["generate", "refine", "finish"]:
    """Render the new prompt; when selection kept nothing (Algorithm 8's empty ΔP), refine first if a
    refinement is due, else stop."""
    if state.get("refine_with"):
        return "refine"
    return "finish" if state.get("stopped_because") else "generate"


def after_refine(state: ArpoState) -> Literal["generate", "finish"]:
    """Render what the refinement kept; stop when it kept nothing either."""
    return "finish" if state.get("stopped_because") else "generate"


# The session graph (a person reviews every regenerated image)


def after_review(state: ArpoState) -> Literal["compare", "generate", "review", "refine", "finish"]:
    """Follow the person's reply: carry on, render their prompt, refine, ask again, or finish."""
    return state.get("next_step") or "compare"  # type: ignore[return-value]


def after_session_select(state: ArpoState) -> Literal["generate", "refine", "review"]:
    """A round that kept nothing is refined when a refinement is due, then goes back to the person,
    who may steer it, instead of ending."""
    if state.get("refine_with"):
        return "refine"
    return "review" if state.get("stopped_because") else "generate"


def after_session_refine(state: ArpoState) -> Literal["generate", "review"]:
    """Render what the refinement kept; with nothing kept, ask the person."""
    return "review" if state.get("stopped_because") else "generate"
