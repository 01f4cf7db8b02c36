"""Refinement inside the loop: when a proposal round keeps nothing, an inversion tool polishes the best
prompt so far, and what it suggests competes in the same greedy selection as any proposed phrase.

- PH2P starts its token slots from the prompt's tokens and optimises them against the diffusion
  model's denoising loss; EDITOR starts its text embedding from the prompt's and optimises it against
  the reference's reconstruction, then turns it back into text; the regressor retrieves the prompts
  of its bank nearest to the reference. Each runs `refine_steps` optimisation steps.
- What a tool returns is turned into candidate phrases: the phrases and runs of words of its prompts
  that the current prompt does not have. They join the prompt only through greedy CLIP selection, and
  the next iteration's regenerated image is scored like any other: a tool never replaces the prompt.
- Every refinement is kept in the history as a tool call (tool, arguments, seconds, proposed, kept).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from arpo.core.errors import ArpoError
from arpo.core.phrases import contains_words, has_phrase, phrase_key, prompt_phrase, prompt_phrases
from arpo.core.run_config import REFINE_STEPS, REFINE_TOOLS, RunConfig
from arpo.graphs.context import ArpoContext
from arpo.graphs.inverter_calls import invert_with
from arpo.graphs.selection import SelectionOutcome, select_for_models
from arpo.storage.records import ToolCallRecord

MAX_PHRASE_WORDS = 6
"""A run of new words longer than this is cut into phrases of this many (the length phrases are asked for)."""
MAX_REFINED_PHRASES = 24
"""Candidates one refinement offers at most (the selection scores all of them in one batch per round)."""


def refine_tool_for(config: RunConfig, ctx: ArpoContext) -> str | None:
    """The tool `config.refine` names, or for `auto` the first that suits these models: the regressor
    when a checkpoint is given (a retrieval: the cheapest), then PH2P (SD 1.x/2.x), then EDITOR
    (SD and SDXL); None for `none` or when no tool suits."""
    if config.refine == "none":
        return None
    if config.refine != "auto":
        return config.refine
    if config.regressor:
        return "regressor"
    return next((tool for tool in ("ph2p", "editor") if tool_suits(tool, ctx)), None)


def tool_suits(tool: str, ctx: ArpoContext) -> bool:
    """Whether `tool` can run on this run's text-to-image model family."""
    from arpo.tools.inversion.diffusion_parts import refuse_unsupported_family

    try:
        refuse_unsupported_family(ctx.models.text_to_image, tool, sdxl=tool == "editor")
    except ArpoError:
        return False
    return True


def starting_prompt(state: dict) -> str:
    """What a refinement starts from: the best prompt so far (by its regenerated image), else the current one."""
    return state.get("best_prompt") or state["prompt"]


@dataclass
class Refinement:
    """What one refinement came to: the selection over its phrases, and its record."""

    outcome: SelectionOutcome
    record: ToolCallRecord


def refine(ctx: ArpoContext, state: dict, tool: str, *, caller: str = "loop") -> Refinement:
    """Run `tool` from the best prompt so far, select among its phrases, and keep the call in the history."""
    if tool not in REFINE_TOOLS:
        raise ArpoError(f"unknown refinement tool {tool!r}; choose one of {', '.join(REFINE_TOOLS)}")
    config = ctx.config or RunConfig()
    start = starting_prompt(state)
    steps = config.refine_steps or REFINE_STEPS
    started = time.perf_counter()
    tool_prompts = _tool_prompts(ctx, state, tool, config, start, steps)
    phrases = candidate_phrases(tool_prompts, start)
    outcome = select_for_models(ctx.models, ctx.reference(state["reference_sha256"]).embedding, start, phrases)
    record = ToolCallRecord(
        tool=tool, caller=caller, iteration_index=state["iteration"], seconds=time.perf_counter() - started,
        arguments={"start_prompt": start, "steps": steps if tool != "regressor" else None},
        proposed=phrases, kept=outcome.selected, outcome={"tool_prompts": tool_prompts[:5]},
    )
    ctx.history.record_tool_call(state["run_id"], record)
    ctx.save_brain_calls(state["run_id"], state["iteration"])  # EDITOR's rewrites may have asked the LLM
    return Refinement(outcome, record)


def _tool_prompts(ctx: ArpoContext, state: dict, tool: str, config: RunConfig, start: str, steps: int) -> list[str]:
    """The prompts a tool offers, best first."""
    from arpo.tools.inverters import build_inverter

    if tool == "regressor":
        if not config.regressor:
            raise ArpoError("refining with the regressor needs its checkpoint: pass --regressor PATH")
        inverter = build_inverter("regressor", config)
        return [match.prompt for match in inverter.matches(ctx.reference(state["reference_sha256"]).image)]
    inverter = build_inverter(tool, config, llm=ctx.brains.llm, start_prompt=start, steps=steps)
    result = invert_with(inverter, ctx, state["run_id"], state["reference_sha256"], state["seed"],
                         trajectory=f"refine:{tool}:{state['iteration']}")
    others = [entry["prompt"] for entry in result.details.get("rescored", []) if entry.get("prompt") != result.prompt]
    return [prompt for prompt in [result.prompt, *others] if prompt]


def candidate_phrases(tool_prompts: list[str], current: str) -> list[str]:
    """The phrases of the tools' prompts the current prompt lacks, and for a phrase it partly has,
    the runs of words it lacks (at most MAX_PHRASE_WORDS words each), first seen first."""
    current_key = phrase_key(current)
    found: dict[str, str] = {}
    for tool_prompt in tool_prompts:
        for part in prompt_phrases(tool_prompt):
            phrase = prompt_phrase(part)
            if not phrase_key(phrase) or has_phrase(current, phrase):
                continue
            for piece in _new_word_runs(phrase, current_key):
                found.setdefault(phrase_key(piece), piece)
    return list(found.values())[:MAX_REFINED_PHRASES]


def _new_word_runs(phrase: str, current_key: str) -> list[str]:
    """`phrase` itself when none of its words is in the prompt, else its runs of new words; long runs
    are cut to MAX_PHRASE_WORDS words."""
    words = phrase.split()
    new = [not contains_words(current_key, phrase_key(word)) if phrase_key(word) else False for word in words]
    runs: list[list[str]] = [[]]
    for word, is_new in zip(words, new):
        if is_new:
            runs[-1].append(word)
        elif runs[-1]:
            runs.append([])
    pieces = []
    for run in runs:
        for start in range(0, len(run), MAX_PHRASE_WORDS):
            pieces.append(" ".join(run[start:start + MAX_PHRASE_WORDS]))
    return [piece for piece in pieces if piece]
