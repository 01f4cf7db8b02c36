"""Inversion methods by name: what `arpo invert --method` and `--init` accept, built from a run's config.

The hard-prompt and embedding methods live in `arpo.tools.inversion`, the prompt-embedding regressor
in `arpo.tools.regressor`; each is imported only when it is asked for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from arpo.core.errors import InvalidInputError
from arpo.core.run_config import INVERSION_METHODS
from arpo.tools.inversion.base import InversionBudget, PromptInverter

if TYPE_CHECKING:
    from arpo.core.run_config import RunConfig



def inversion_budget(config: RunConfig) -> InversionBudget:
    """The step and time limits a run's config sets for its inversion method."""
    return InversionBudget(max_steps=config.inversion_steps, max_seconds=config.inversion_seconds)


def build_inverter(
    method: str, config: RunConfig, *, llm: Any = None, start_prompt: str | None = None, steps: int | None = None
) -> PromptInverter:
    """The named inverter, with the config's budget as its default.

    `llm` (a brain) lets EDITOR's training-free text recovery ask a language model for rewrites;
    without it the phrase banks and the caption are the only sources. `start_prompt`: PH2P starts its
    tokens and EDITOR its embedding from this prompt (refining it) instead of from scratch or the
    caption. `steps` replaces the config's step limit (a refinement's `refine_steps`).
    """
    budget = inversion_budget(config)
    if steps is not None:
        budget = budget.model_copy(update={"max_steps": steps})
    if method == "pez":
        from arpo.tools.inversion.pez import PezInverter

        return PezInverter(budget=budget)
    if method == "ph2p":
        from arpo.tools.inversion.ph2p import Ph2pInverter

        return Ph2pInverter(budget=budget, initial_prompt=start_prompt)
    if method == "editor":
        from arpo.tools.inversion.editor import EditorInverter
        from arpo.tools.inversion.training_free_inverter import TrainingFreeInverter, llm_rewriter

        if config.editor_inverter:
            return EditorInverter(budget=budget, trained_inverter_folder=config.editor_inverter, initial_prompt=start_prompt)
        recovery = TrainingFreeInverter(rewriter=llm_rewriter(llm) if llm is not None else None)
        return EditorInverter(budget=budget, text_recovery=recovery, initial_prompt=start_prompt)
    if method == "regressor":
        from arpo.tools.regressor.inverter import RegressorInverter

        return RegressorInverter.from_config(config)
    raise InvalidInputError(f"unknown inversion method '{method}'; choose from {', '.join(INVERSION_METHODS)}")

