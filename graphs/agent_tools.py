"""The tools agent mode offers the LLM, as OpenAI function tools over the fixed loop's own steps.

Each tool is a thin wrapper over the step a node of the fixed loop runs (graphs/nodes.py,
graphs/refinement.py), so an agent's run renders, compares, proposes, selects, refines and stores
iterations exactly as the fixed loop does:

| tool | arguments | what it does |
| --- | --- | --- |
| generate_and_compare | none | render the current prompt (a new iteration when it changed), score CLIP-I and CLIP-T, compare with the VLM once per render |
| propose_phrases | focus (text, optional) | the LLM proposer's candidate phrases for the latest differences; `focus` is extra guidance it must address first |
| select | phrases (list, optional) | greedy CLIP selection of the given phrases, or of the last proposal's |
| refine | tool (ph2p, editor or regressor: those that suit the run) | refine the best prompt; its phrases go through the same selection |
| edit_prompt | prompt (text) | replace the current prompt; it must fit the model's token budget |
| finish | reason (text, optional) | end the run |

A call is checked in two stages. `prepare` reads its name and arguments without side effects (an
unknown tool or arguments of the wrong shape is refused there), so the agent node knows before
running anything whether a reply held a usable call; `execute` runs it, and may still refuse what
only the run's state can judge (a prompt over the token budget, nothing to select). Either refusal is
a `ToolRefused`, whose message goes back to the model as the call's result.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from arpo.agents.brain import FunctionCall
from arpo.core.errors import InvalidInputError
from arpo.core.phrases import has_phrase, phrase_key
from arpo.core.run_config import REFINE_TOOLS, RefineTool, RunConfig
from arpo.graphs import refinement
from arpo.graphs.context import ArpoContext
from arpo.graphs.human_turn import split_phrases
from arpo.graphs.iterations import iteration_record
from arpo.graphs.nodes import differences_now, judged_selection, proposal_update, render_iteration, step_limit_reached
from arpo.graphs.session_nodes import with_pinned
from arpo.storage.records import CandidateRecord

SHOWN_PHRASES = 12
"""Phrases a result lists at most (the model needs examples of what was left out, not all of them)."""


class ToolRefused(Exception):
    """A call that cannot run as asked; its message is what the model reads as the call's result."""


class UnknownTool(ToolRefused):
    """A call of a tool this run does not offer."""


def _phrase_list(value: Any) -> Any:
    """Phrases as a list, also when a model wrote them as one comma-separated string (phrases in a
    prompt never hold commas, so the reading is unambiguous) or sent null for none."""
    if value is None:
        return []
    return split_phrases(value) if isinstance(value, str) else value


class _Arguments(BaseModel):
    """Arguments of one tool: unknown keys are refused, so a misspelt one is reported, not ignored."""

    model_config = ConfigDict(extra="forbid")


class GenerateArguments(_Arguments):
    pass


class ProposeArguments(_Arguments):
    focus: str = Field("", max_length=400, description=(
        "Optional guidance the proposer must address first, e.g. 'the fur should look wet'."))


class SelectArguments(_Arguments):
    phrases: Annotated[list[str], BeforeValidator(_phrase_list)] = Field(
        default_factory=list, max_length=24, description=(
            "Short comma-free phrases to try appending; leave empty to select among the last proposal's candidates."))


class RefineArguments(_Arguments):
    tool: RefineTool = Field(description=(
        "ph2p optimises the prompt's tokens against the diffusion model, editor optimises its text "
        "embedding towards the reference, regressor retrieves prompts of similar images."))


class EditArguments(_Arguments):
    prompt: str = Field(min_length=1, max_length=2000, description=(
        "The whole new prompt, comma-separated phrases, most important first."))


class FinishArguments(_Arguments):
    reason: str = Field("", max_length=300, description="Why the search ends here, in a few words.")


@dataclass
class ToolOutcome:
    """What one call came to."""

    result: dict
    """What the model is told."""
    update: dict
    """The state changes the call made."""
    summary: str
    """One progress line for the person watching."""
    proposed: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class AgentTool:
    """One tool: its name, what the model is told about it, its arguments, and what runs it."""

    name: str
    description: str
    arguments: type[_Arguments]
    run: Callable[[ArpoContext, dict, Any], ToolOutcome]

    def spec(self, ctx: ArpoContext) -> dict:
        """The OpenAI function tool the model is offered."""
        parameters = _plain_schema(self.arguments.model_json_schema())
        if self.arguments is RefineArguments:  # only the tools that can run on these models
            parameters["properties"]["tool"]["enum"] = refine_tools_offered(ctx)
        return {"type": "function", "function": {"name": self.name, "description": self.description,
                                                 "parameters": parameters}}


@dataclass(frozen=True)
class PreparedCall:
    """A call whose tool and arguments were read and found in order."""

    call: FunctionCall
    tool: AgentTool
    arguments: _Arguments


def prepare(call: FunctionCall, arguments: dict, offered: list[AgentTool]) -> PreparedCall:
    """The call's tool and validated arguments; UnknownTool or ToolRefused when it cannot be run."""
    tool = next((tool for tool in offered if tool.name == call.name), None)
    if tool is None:
        raise UnknownTool(f"unknown tool {call.name!r}; the tools are: {', '.join(t.name for t in offered)}")
    try:
        return PreparedCall(call, tool, tool.arguments.model_validate(arguments))
    except ValidationError as error:
        raise ToolRefused(f"bad arguments for {tool.name}: {_validation_summary(error)}") from None


def execute(ctx: ArpoContext, state: dict, prepared: PreparedCall) -> ToolOutcome:
    """Run a prepared call on the state; ToolRefused when the run's state says it cannot be done."""
    try:
        return prepared.tool.run(ctx, state, prepared.arguments)
    except InvalidInputError as error:  # a tool's own refusal (a refinement's missing checkpoint, ...)
        raise ToolRefused(str(error)) from None


def offered_tools(ctx: ArpoContext) -> list[AgentTool]:
    """The tools this run offers: every one, but refine only when some refinement tool suits it."""
    return [tool for tool in TOOLS if tool.name != "refine" or refine_tools_offered(ctx)]


def refine_tools_offered(ctx: ArpoContext) -> list[str]:
    """The refinement tools the agent may choose: those `--refine` allows (auto: all) that can run on
    these models; the regressor only with its checkpoint."""
    config = ctx.config or RunConfig()
    if config.refine == "none":
        return []
    wanted = REFINE_TOOLS if config.refine == "auto" else (config.refine,)
    return [tool for tool in wanted
            if (bool(config.regressor) if tool == "regressor" else refinement.tool_suits(tool, ctx))]


def generations_left(state: dict) -> int:
    """New prompts the run may still render (the step limit counts renders after the first)."""
    return max(state["max_steps"] - state["iteration"], 0)


# The tools


def _generate_and_compare(ctx: ArpoContext, state: dict, _arguments: GenerateArguments) -> ToolOutcome:
    update: dict = {}
    fresh = state["prompt"] != state.get("rendered_prompt")
    if fresh:
        if generations_left(state) == 0:
            raise ToolRefused("no generations are left for a new prompt; call finish")
        index = state["iteration"] + 1
        update = render_iteration(ctx, {**state, "iteration": index}) | {"iteration": index, "judged": []}
    view = {**state, **update}
    last = fresh and generations_left(view) == 0
    if last:
        update["stopped_because"] = step_limit_reached(view)
    elif view.get("compared_iteration") != view["iteration"]:
        update |= {"differences": differences_now(ctx, view), "compared_iteration": view["iteration"]}
    view = {**state, **update}
    result = {
        "iteration": view["iteration"], "prompt": view["prompt"], "clip_i": round(view["clip_i"], 4),
        "clip_t": round(view["clip_t"], 4), "best_clip_i": round(view["best_clip_i"], 4),
        "best_iteration": view.get("best_iteration", 0), "generations_left": generations_left(view),
        "differences": view.get("differences", "") if not last else "",
    }
    if not fresh:
        result["note"] = "this prompt was already rendered; change it (select, refine, edit_prompt) before rendering again"
    if last:
        result["note"] = "that was the last generation the run allows; the run ends"
    best = " (best so far)" if view.get("best_iteration") == view["iteration"] and fresh else ""
    summary = f"generate_and_compare: iteration {view['iteration']}, CLIP-I {view['clip_i']:.4f}{best}"
    return ToolOutcome(result, update, summary)


def _propose_phrases(ctx: ArpoContext, state: dict, arguments: ProposeArguments) -> ToolOutcome:
    asked = state if not arguments.focus else {**state, "feedback": [*state.get("feedback", []), arguments.focus]}
    update = proposal_update(ctx, asked)
    proposal = update["proposal"]
    result = {"candidates": update["candidates"], "source": proposal.get("source"),
              "dropped_by_hygiene": len(proposal.get("dropped") or [])}
    if not update["candidates"]:
        result["note"] = "no usable phrase came back; try a focus, edit_prompt, refine or finish"
    summary = f"propose_phrases: {len(update['candidates'])} candidate(s) from {proposal.get('source')}"
    return ToolOutcome(result, update, summary, proposed=list(update["candidates"]))


def _select(ctx: ArpoContext, state: dict, arguments: SelectArguments) -> ToolOutcome:
    given = bool(arguments.phrases)
    phrases = _without_banned(arguments.phrases if given else list(state.get("candidates", [])), state)
    if not phrases:
        raise ToolRefused("nothing to select: pass phrases, or call propose_phrases first")
    outcome = judged_selection(ctx, state, phrases, caller="agent")
    update: dict = {} if given else {"candidates": []}
    if state["prompt"] == state.get("rendered_prompt"):
        update["judged"] = _record_judged(ctx, state, outcome)
    if outcome.selected or outcome.compressed:
        update["prompt"] = outcome.prompt
    left_out = [{"phrase": v.phrase, "reason": v.reason} for v in outcome.verdicts if not v.selected]
    result = {"kept": outcome.selected, "prompt": outcome.prompt, "clip_t_before": round(outcome.start_score, 4),
              "clip_t_after": round(outcome.best_score, 4), "left_out": left_out[:SHOWN_PHRASES],
              "compressed": outcome.compressed}
    if "prompt" in update:
        result["note"] = "call generate_and_compare to render the new prompt and learn its CLIP-I"
    summary = f"select: kept {', '.join(outcome.selected) or 'nothing'} of {len(phrases)}"
    return ToolOutcome(result, update, summary, proposed=phrases, kept=list(outcome.selected))


def _record_judged(ctx: ArpoContext, state: dict, outcome) -> list[dict]:
    """Store the current render's iteration with every candidate judged against it so far (this
    selection's after the earlier ones), as the fixed loop's select does; the judged list for the state."""
    earlier = [CandidateRecord.model_validate(verdict) for verdict in state.get("judged", [])]
    shown = dataclasses.replace(outcome, verdicts=earlier + list(outcome.verdicts))
    ctx.history.record_iteration(state["run_id"], iteration_record(ctx, state, shown))
    return [verdict.model_dump() for verdict in shown.verdicts]


def _refine(ctx: ArpoContext, state: dict, arguments: RefineArguments) -> ToolOutcome:
    offered = refine_tools_offered(ctx)
    if arguments.tool not in offered:
        raise ToolRefused(f"{arguments.tool} cannot refine in this run; choose one of: {', '.join(offered)}")
    start = state.get("best_prompt") or state["prompt"]
    refined = refinement.refine(ctx, state, arguments.tool, caller="agent")
    outcome = refined.outcome
    update: dict = {"refined_against": start}
    if outcome.selected:
        update |= {"prompt": outcome.prompt, "candidates": []}
    result = {"tool": arguments.tool, "started_from": start, "proposed": refined.record.proposed[:SHOWN_PHRASES],
              "kept": outcome.selected, "prompt": update.get("prompt", state["prompt"])}
    if outcome.selected:
        result["note"] = "the kept phrases were added to the best prompt; call generate_and_compare to render it"
    summary = f"refine with {arguments.tool}: kept {', '.join(outcome.selected) or 'nothing'}"
    return ToolOutcome(result, update, summary, proposed=list(refined.record.proposed), kept=list(outcome.selected))


def _edit_prompt(ctx: ArpoContext, state: dict, arguments: EditArguments) -> ToolOutcome:
    prompt = with_pinned(" ".join(arguments.prompt.split()), list(state.get("pinned", [])))
    t2i = ctx.models.text_to_image
    tokens, budget = t2i.count_tokens(prompt), t2i.token_budget()
    if tokens > budget:
        raise ToolRefused(f"the prompt has {tokens} tokens and the model reads only {budget}; shorten it")
    banned = [phrase for phrase in state.get("banned", []) if has_phrase(prompt, phrase)]
    if banned:
        raise ToolRefused(f"the prompt holds banned phrases: {', '.join(banned)}")
    result = {"prompt": prompt, "tokens": tokens, "budget": budget,
              "note": "call generate_and_compare to render it and learn its CLIP-I"}
    return ToolOutcome(result, {"prompt": prompt, "candidates": []}, f"edit_prompt: {prompt}")


def _finish(_ctx: ArpoContext, _state: dict, arguments: FinishArguments) -> ToolOutcome:
    reason = " ".join(arguments.reason.split())
    why = f"the agent finished: {reason}" if reason else "the agent finished"
    return ToolOutcome({"finished": True}, {"stopped_because": why}, f"finish: {reason or 'no reason given'}")


def _without_banned(phrases: list[str], state: dict) -> list[str]:
    """A person's ban (in a session) holds for the agent too."""
    banned = {phrase_key(phrase) for phrase in state.get("banned", [])}
    return [phrase for phrase in phrases if phrase_key(phrase) not in banned]


TOOLS: tuple[AgentTool, ...] = (
    AgentTool("generate_and_compare", (
        "Render the current prompt with the run's seed and score the image against the reference: CLIP-I "
        "(image to image; it picks the best prompt) and CLIP-T (prompt to image). Also returns how the "
        "render differs from the reference, in words. A prompt that changed becomes a new iteration and "
        "uses one of the run's generations; an unchanged one is not rendered again."),
        GenerateArguments, _generate_and_compare),
    AgentTool("propose_phrases", (
        "Ask the phrase proposer for short phrases that would bring the render closer to the reference, "
        "based on the latest differences. Returns candidates; nothing joins the prompt until select keeps it."),
        ProposeArguments, _propose_phrases),
    AgentTool("select", (
        "Greedy selection: try appending each phrase to the current prompt and keep those that raise CLIP-T, "
        "within the model's token budget (a full prompt is compressed to make room). Without phrases, the last "
        "proposal's candidates are tried."),
        SelectArguments, _select),
    AgentTool("refine", (
        "Refine the best prompt so far with an inversion tool; the phrases it suggests go through the same "
        "selection. Slower than a proposal; useful when proposals stop helping."),
        RefineArguments, _refine),
    AgentTool("edit_prompt", (
        "Replace the current prompt with your own rewrite (it must fit the model's token budget). It is "
        "judged by its render like any other prompt."),
        EditArguments, _edit_prompt),
    AgentTool("finish", "End the run. The prompt whose render scored the best CLIP-I is the result.",
              FinishArguments, _finish),
)


def _plain_schema(schema: dict) -> dict:
    """A JSON schema without pydantic's titles, which only lengthen the request."""
    if isinstance(schema, dict):
        return {key: _plain_schema(value) for key, value in schema.items() if key != "title"}
    if isinstance(schema, list):
        return [_plain_schema(item) for item in schema]
    return schema


def _validation_summary(error: ValidationError) -> str:
    """Pydantic's complaints, one short clause each ('phrases: Input should be a valid list')."""
    parts = []
    for problem in error.errors()[:3]:
        where = ".".join(str(part) for part in problem.get("loc", ()))
        parts.append(f"{where}: {problem['msg']}" if where else problem["msg"])
    return "; ".join(parts)
