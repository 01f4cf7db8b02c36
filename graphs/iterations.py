"""What one iteration leaves in the history: its render and scores, and the record built from the state.

Shared by the loop's nodes and by the inversion methods' iteration 0, so both store an iteration the
same way.
"""

from __future__ import annotations

from arpo.graphs.context import ArpoContext
from arpo.graphs.selection import SelectionOutcome
from arpo.graphs.state import ArpoState
from arpo.storage.records import IterationRecord, ProposalRecord


def render_and_score(ctx: ArpoContext, reference_sha256: str, prompt: str, seed: int, **metadata: str) -> dict:
    """Render `prompt` with `seed`, store the image, and score it against the reference both ways.

    Returns `generated_sha256`, `clip_t` (the prompt as the T2I model reads it) and `clip_i`.
    """
    t2i, clip = ctx.models.text_to_image, ctx.models.clip
    reference = ctx.reference(reference_sha256)
    image = ctx.take_render(prompt, seed)
    if image is None:
        image = t2i.generate(prompt, seed)
    stored = ctx.history.store_image(
        image, role="generated", metadata={"seed": seed, "model": t2i.name, "prompt": prompt, **metadata}
    )
    return {
        "generated_sha256": stored.sha256,
        "clip_t": clip.text_image_similarity(reference.embedding, [t2i.truncate(prompt)])[0],
        "clip_i": clip.image_similarity(reference.embedding, clip.encode_images([image])[0]),
    }


def iteration_record(ctx: ArpoContext, state: ArpoState, outcome: SelectionOutcome | None = None) -> IterationRecord:
    """The history record of the state's iteration (with its candidates once `select` has judged them)."""
    t2i = ctx.models.text_to_image
    prompt = state["prompt"]
    token_count, budget = t2i.count_tokens(prompt), t2i.token_budget()
    notes = []
    if token_count > budget:
        notes.append(f"prompt has {token_count} tokens; the model reads only the first {budget}")
    candidates = []
    proposal = None
    if outcome is not None:
        proposal, proposal_note = _proposal_record(state.get("proposal"))
        notes += [proposal_note] if proposal_note else []
        candidates = list(outcome.verdicts)
        if outcome.over_budget:
            notes.append(f"{len(outcome.over_budget)} candidate(s) left out: they would exceed the {budget}-token budget")
        if outcome.past_scorer_window:
            notes.append(
                f"{len(outcome.past_scorer_window)} candidate(s) left out: they would fall past the scorer's "
                f"{ctx.models.clip.context_length}-token window, so CLIP could not score them"
            )
    return IterationRecord(
        index=state["iteration"],
        prompt=prompt,
        seen_prompt=t2i.truncate(prompt),
        token_count=token_count,
        token_budget=budget,
        generated_sha256=state["generated_sha256"],
        clip_t=state["clip_t"],
        clip_i=state["clip_i"],
        differences=state.get("differences") if outcome is not None else None,
        candidates=candidates,
        note="; ".join(notes) or None,
        proposal=proposal,
    )


def _proposal_record(proposed: dict | None) -> tuple[ProposalRecord | None, str | None]:
    """The stored form of a round's proposal, and a note when the LLM had to be replaced."""
    if not proposed:
        return None, None
    record = ProposalRecord.model_validate(proposed)
    note = None
    if proposed.get("unusable"):
        note = (
            f"the LLM's replies held no usable phrase, even after a repair request ({proposed['unusable']}); "
            "this round's candidates came from the offline phrase banks"
        )
    return record, note
