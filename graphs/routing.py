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
