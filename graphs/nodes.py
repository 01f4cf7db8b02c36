"""The ARPO loop's nodes: initialize, generate, compare, propose, select, refine, finish.

Each node reads the state, does one step of the loop with the models and brains from the runtime
context, writes what it did to the history at once, and returns the state update. Nodes may be re-run
when a run resumes, so every history write is idempotent (keyed by run and iteration).

The work of generate, compare, propose and select is in plain functions of the context and the state
(`render_iteration`, `differences_now`, `proposal_update`, `judged_selection`), which the nodes wrap
with the fixed loop's stop rules; agent mode's tools (graphs/agent_tools.py) call the same functions.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial

from langgraph.runtime import Runtime

from arpo.agents.phrase_hygiene import BANNED
from arpo.agents.proposal import Proposal, ProposalRequest
from arpo.core.phrases import DroppedPhrase, phrase_key
from arpo.core.run_config import RunConfig
from arpo.graphs.context import ArpoContext
from arpo.graphs.inverter_calls import invert_with
from arpo.graphs.iterations import iteration_record, render_and_score
from arpo.graphs import refinement
from arpo.graphs.compression import compress, fit_to_budget, needs_compression
from arpo.graphs.refinement import refine_tool_for
from arpo.graphs.selection import DUPLICATE, OVER_BUDGET, SelectionOutcome, select_for_models
from arpo.graphs.state import ArpoState

Ctx = Runtime[ArpoContext]


def initialize(state: ArpoState, runtime: Ctx) -> dict:
    """P0: the given prompt, an inversion method's prompt (`--init`) or a caption; reference descriptions
    once per run (concurrently). An inversion's trajectory goes into the history under the run."""
    ctx = runtime.context
    reference = ctx.reference(state["reference_sha256"])
    jobs: dict[str, Callable] = {}
    if not state.get("initial_prompt"):
        jobs["caption"] = partial(_first_prompt, ctx, state, reference.image)
    if ctx.framework == "enhanced" and ctx.uses_vlm:
        jobs["description"] = partial(ctx.describer.describe, reference.image, name=reference.sha256)
    done = _run_together(jobs)
    prompt = (state.get("initial_prompt") or done["caption"]).strip()
    fitted = fit_to_budget(ctx, state["reference_sha256"], prompt)
    if fitted is not None:  # no prompt the run stores is longer than what the model reads
        ctx.history.record_tool_call(state["run_id"], fitted.tool_call(0, [], []))
        prompt = fitted.after
    update: dict = {"prompt": prompt, "iteration": 0, "tried": [], "best_clip_i": -2.0}
    if "description" in done:
        described = done["description"]
        update |= {"reference_content": described.content, "reference_style": described.style}
    ctx.save_brain_calls(state["run_id"], 0)
    return update


def _run_together(jobs: dict[str, Callable]) -> dict:
    """Each job's result by name; two or more run at once (a caption on the models while a brain
    describes), a lone one on this thread."""
    if len(jobs) < 2:
        return {name: job() for name, job in jobs.items()}
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        futures = {name: pool.submit(job) for name, job in jobs.items()}
        return {name: future.result() for name, future in futures.items()}


def _first_prompt(ctx: ArpoContext, state: ArpoState, image) -> str:
    # The store names the reference by its pixels, so the captioner need not hash them again.
    name = state["reference_sha256"]
    if ctx.initial_inverter is None:
        return ctx.models.captioner.caption(image, name=name)
    result = invert_with(ctx.initial_inverter, ctx, state["run_id"], state["reference_sha256"], state["seed"])
    return result.prompt or ctx.models.captioner.caption(image, name=name)


def generate(state: ArpoState, runtime: Ctx) -> dict:
    """Render the current prompt, score it both ways, and keep the best prompt by image fidelity.

    A stop decided before the render (the agent finished with a prompt it had not rendered yet) keeps
    its reason."""
    ctx = runtime.context
    update = render_iteration(ctx, state)
    if why := state.get("stopped_because") or _stop_after_render(ctx, state):
        update["stopped_because"] = why
    return update


def _stop_after_render(ctx: ArpoContext, state: ArpoState) -> str | None:
    """Why the loop ends with this render: the step limit, or a budget spent; None to go on."""
    if state["iteration"] >= state["max_steps"]:
        return step_limit_reached(state)
    return ctx.budget_spent(state["run_id"], state.get("seconds_spent", 0.0))


def render_iteration(ctx: ArpoContext, state: ArpoState) -> dict:
    """Render the state's prompt as iteration `state["iteration"]`, score it both ways, keep it as the
    best prompt when its image is the closest yet, and record the iteration."""
    prompt, index = state["prompt"], state["iteration"]
    update: dict = render_and_score(ctx, state["reference_sha256"], prompt, state["seed"])
    update["rendered_prompt"] = prompt
    clip_i = update["clip_i"]
    if clip_i > state.get("best_clip_i", -2.0):
        update |= {"best_prompt": prompt, "best_clip_i": clip_i, "best_iteration": index}
    ctx.history.record_iteration(state["run_id"], iteration_record(ctx, {**state, **update}))
    return update


def step_limit_reached(state: ArpoState) -> str:
    return f"reached the step limit ({state['max_steps']})"


def compare(state: ArpoState, runtime: Ctx) -> dict:
    """How the current image differs from the reference, in words (empty with no VLM)."""
    return {"differences": differences_now(runtime.context, state)}


def differences_now(ctx: ArpoContext, state: ArpoState) -> str:
    """What the comparer finds between the reference and the state's generated image (the VLM's two-image
    comparison, or the enhanced framework's descriptions compared by the LLM); empty with no VLM."""
    if not ctx.uses_vlm:
        return ""
    reference = ctx.reference(state["reference_sha256"])
    generated = ctx.history.open_image(state["generated_sha256"])
    if ctx.framework == "vanilla":
        # The store names images by their pixels, so the brain's image parts need not hash them again.
        names = (reference.sha256, state["generated_sha256"])
        differences = ctx.comparer.compare(reference.image, generated, names=names)
    else:
        from arpo.agents.roles import ImageDescription

        described = ctx.describer.describe(generated, name=state["generated_sha256"])
        reference_description = ImageDescription(
            content=state.get("reference_content", ""), style=state.get("reference_style", "")
        )
        differences = ctx.differ.differences(reference_description, described)
    ctx.save_brain_calls(state["run_id"], state["iteration"])
    return differences


def propose(state: ArpoState, runtime: Ctx) -> dict:
    """Candidate phrases meant to close the differences: from the LLM, or a phrase bank offline.

    When the LLM's replies hold nothing usable even after its repair request, this round's candidates
    come from the phrase banks instead ("offline-fallback"), so one bad reply does not end the run.
    """
    ctx = runtime.context
    update = proposal_update(ctx, state)
    if (spent := ctx.budget_spent(state["run_id"], state.get("seconds_spent", 0.0))) is not None:
        update |= {"candidates": [], "stopped_because": spent}  # nothing more is selected once a budget is spent
    return update


def proposal_update(ctx: ArpoContext, state: ArpoState) -> dict:
    """This round's proposal for the state's prompt and differences, as a state update (candidates,
    the phrases tried against this prompt, the proposal's record; the feedback it addressed is spent)."""
    feedback = list(state.get("feedback", []))
    prompt = state["prompt"]
    # Phrases rejected against an earlier prompt may help this one; only this prompt's are kept out.
    tried = list(state.get("tried", [])) if state.get("tried_against") == prompt else []
    request = ProposalRequest(
        current_prompt=prompt,
        differences=state.get("differences", ""),
        tried=tried,
        banned=list(state.get("banned", [])),
        feedback=feedback,
    )
    if ctx.brains.llm is not None:
        proposal = ctx.llm_proposer.propose(request)
        if proposal.unusable is not None:
            fallback = _offline_proposal(ctx, state, request, source="offline-fallback")
            proposal = fallback.model_copy(update={"dropped": proposal.dropped, "unusable": proposal.unusable})
    else:
        proposal = _offline_proposal(ctx, state, request, source="offline")
    proposal = _without_banned(proposal, state.get("banned", []))
    ctx.save_brain_calls(state["run_id"], state["iteration"])
    update: dict = {
        "candidates": proposal.phrases,
        "tried": tried + proposal.phrases,
        "tried_against": prompt,
        "proposal": proposal.model_dump(),
    }
    if feedback:
        update["feedback"] = []  # addressed by this proposal
    return update


def _offline_proposal(ctx: ArpoContext, state: ArpoState, request: ProposalRequest, source: str) -> Proposal:
    reference = ctx.reference(state["reference_sha256"])
    return Proposal(phrases=ctx.offline_proposer.propose(request, reference.embedding), source=source)


def _without_banned(proposal: Proposal, banned: list[str]) -> Proposal:
    """The person's ban is the last word, whatever a proposer was told."""
    banned_keys = {phrase_key(phrase) for phrase in banned}
    if not banned_keys:
        return proposal
    kept = [phrase for phrase in proposal.phrases if phrase_key(phrase) not in banned_keys]
    dropped = [
        DroppedPhrase(phrase=phrase, reason=BANNED) for phrase in proposal.phrases if phrase_key(phrase) in banned_keys
    ]
    return proposal.model_copy(update={"phrases": kept, "dropped": [*proposal.dropped, *dropped]})


def select(state: ArpoState, runtime: Ctx) -> dict:
    """Greedy selection by CLIP text–image similarity of the prompt as the T2I model will read it; a
    prompt that fills its budget is compressed and the refused candidates are tried again."""
    ctx = runtime.context
    if state.get("stopped_because"):  # the proposal found a budget spent
        ctx.history.record_iteration(state["run_id"], iteration_record(ctx, state))
        return {}
    budget = ctx.models.text_to_image.token_budget()
    outcome = judged_selection(ctx, state, state.get("candidates", []))
    record = iteration_record(ctx, state, outcome)
    ctx.history.record_iteration(state["run_id"], record)
    if outcome.selected or outcome.compressed:  # a compressed prompt is a new prompt, with room for the next round
        return {"prompt": outcome.prompt, "iteration": state["iteration"] + 1, "candidates": []}
    stop: dict = {"stopped_because": _why_nothing_selected(state, outcome, budget)}
    return stop | _refinement_due(ctx, state)


def judged_selection(ctx: ArpoContext, state: ArpoState, candidates: list[str], *, caller: str = "loop") -> SelectionOutcome:
    """Greedy selection of `candidates` on the state's prompt, making room by compression when the
    prompt is full (the compression is recorded as `caller`'s)."""
    reference = ctx.reference(state["reference_sha256"])
    # The render of this very prompt measured its CLIP-T (render_and_score): no second forward for it.
    known = state.get("clip_t") if state.get("rendered_prompt") == state["prompt"] else None
    outcome = select_for_models(ctx.models, reference.embedding, state["prompt"], candidates, start_score=known)
    return _with_room_made(ctx, state, outcome, caller)


def _with_room_made(ctx: ArpoContext, state: ArpoState, outcome: SelectionOutcome, caller: str) -> SelectionOutcome:
    """When the prompt is full, compress it and give the candidates it refused another chance; the
    compression (kept or not) goes into the history."""
    if not needs_compression(ctx, outcome.prompt, outcome.over_budget):
        return outcome
    compression = compress(ctx, state["reference_sha256"], outcome.prompt, refused=outcome.over_budget,
                           pinned=list(state.get("pinned", [])))
    retried = None
    if compression.accepted:
        reference = ctx.reference(state["reference_sha256"]).embedding
        retried = select_for_models(ctx.models, reference, compression.after, outcome.over_budget)
    kept = retried.selected if retried is not None else []
    ctx.history.record_tool_call(state["run_id"], compression.tool_call(state["iteration"], outcome.over_budget, kept, caller))
    ctx.save_brain_calls(state["run_id"], state["iteration"])
    return outcome.after_compression(retried) if retried is not None else outcome


def _refinement_due(ctx: ArpoContext, state: ArpoState) -> dict:
    """`refine_with` when this round's empty hands should go to a refinement before the loop stops:
    a tool suits, the best prompt was not refined yet, and no budget is spent."""
    tool = refine_tool_for(ctx.config or RunConfig(), ctx)
    start = refinement.starting_prompt(state)
    if tool is None or state.get("refined_against") == start:
        return {}
    if ctx.budget_spent(state["run_id"], state.get("seconds_spent", 0.0)) is not None:
        return {}
    return {"refine_with": tool}


def refine(state: ArpoState, runtime: Ctx) -> dict:
    """Refine the best prompt with the chosen tool; its phrases go through greedy selection, and what
    is kept makes the next prompt. A refinement that keeps nothing ends the round for good."""
    ctx = runtime.context
    tool = state["refine_with"]
    caller = "person" if state.get("next_step") == "refine" else "loop"
    start = refinement.starting_prompt(state)
    done: dict = {"refine_with": "", "refined_against": start, "next_step": ""}
    outcome = refinement.refine(ctx, state, tool, caller=caller).outcome
    if outcome.selected:
        return done | {"prompt": outcome.prompt, "iteration": state["iteration"] + 1, "candidates": [], "stopped_because": ""}
    before = state.get("stopped_because") or "the round kept nothing"
    return done | {"stopped_because": f"{before}; refining with {tool} kept nothing either"}


def finish(state: ArpoState, runtime: Ctx) -> dict:
    """Close the run in the history with the best prompt by image fidelity and the last prompt."""
    ctx = runtime.context
    stopped_because = state.get("stopped_because") or "finished"
    ctx.history.finish_run(
        state["run_id"],
        best_prompt=state.get("best_prompt", state["prompt"]),
        best_clip_i=state.get("best_clip_i"),
        last_prompt=state["prompt"],
        stopped_because=stopped_because,
    )
    return {"stopped_because": stopped_because}


def _why_nothing_selected(state: ArpoState, outcome: SelectionOutcome, budget: int) -> str:
    if not state.get("candidates"):
        return "no new candidate phrases were proposed"
    if outcome.over_budget and all(v.reason in (OVER_BUDGET, DUPLICATE) for v in outcome.verdicts):
        return f"the prompt is at the {budget}-token budget; no candidate fits"
    unseen = set(outcome.past_scorer_window)
    if unseen and all(v.reason in (OVER_BUDGET, DUPLICATE) or v.phrase in unseen for v in outcome.verdicts):
        return "the prompt fills the scorer's token window; no candidate it could see is left"
    if all(v.reason == DUPLICATE for v in outcome.verdicts):
        return "every candidate repeated a phrase already in the prompt"
    return "no candidate raised CLIP similarity"
