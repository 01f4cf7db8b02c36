"""Decisions between nodes: one small router per branch point."""

from __future__ import annotations

from typing import Literal

from arpo.graphs.state import ArpoState


def after_generate(state: ArpoState) -> Literal["compare", "finish"]:
    """The last generation only scores the final prompt; otherwise look for differences."""
    return "finish" if state.get("stopped_because") else "compare"


def after_select(state: ArpoState) -> Literal["generate", "finish"]:
    """Stop when selection kept nothing (Algorithm 8's empty ΔP); otherwise render the new prompt."""
    return "finish" if state.get("stopped_because") else "generate"


# The session graph (a person reviews every regenerated image)


def after_review(state: ArpoState) -> Literal["compare", "generate", "review", "finish"]:
    """Follow the person's reply: carry on, render their prompt, ask again, or finish."""
    return state.get("next_step", "compare")  # type: ignore[return-value]


def after_session_select(state: ArpoState) -> Literal["generate", "review"]:
    """A round that kept nothing goes back to the person, who may steer it, instead of ending."""
    return "review" if state.get("stopped_because") else "generate"
