"""Room in a full prompt: when candidates are refused as over the text encoder's budget, or the prompt is
within a few tokens of it, the prompt is rewritten shorter, and the refused candidates get another
chance in the room that made.

With an LLM brain the rewrite is the LLM's (merge and shorten phrases, `agents/prompt_compressor.py`);
without one, or when its rewrite does not fit or scores worse, the phrases that add least to the CLIP
similarity are dropped: each phrase's worth is what the score loses without it, and only phrases whose
removal loses nothing are dropped. Either rewrite is kept only if CLIP scores it no worse than the
original, so compressing never trades fidelity for room. Pinned phrases are never dropped.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from arpo.core.phrases import has_phrase, join_prompt, prompt_phrases
from arpo.graphs.context import ArpoContext
from arpo.storage.records import COMPRESS_TOOL, ToolCallRecord

NEAR_BUDGET_TOKENS = 5
"""A prompt this close to the budget is compressed before it blocks the next round."""
ROOM_WANTED = 0.2
"""How much of the budget a compression tries to free, at least (or what the refused phrases need)."""


@dataclass
class Compression:
    """One attempt to shorten a prompt and whether it was kept."""

    before: str
    after: str
    before_tokens: int
    after_tokens: int
    before_score: float
    after_score: float
    method: str
    """llm (the LLM's rewrite) or offline (phrases that added nothing were dropped: also when the
    LLM's rewrite was not shorter or scored worse); fit for a first prompt cut to the budget."""
    seconds: float = 0.0

    @property
    def accepted(self) -> bool:
        if self.method == "fit":  # a prompt past the budget must fit, whatever it scores
            return True
        return self.after != self.before and self.after_tokens < self.before_tokens and self.after_score >= self.before_score

    def tool_call(self, iteration: int, refused: list[str], kept: list[str], caller: str = "loop") -> ToolCallRecord:
        """How the history keeps it: the prompts and scores, and what the room let in."""
        return ToolCallRecord(
            tool=COMPRESS_TOOL, caller=caller, iteration_index=iteration, seconds=self.seconds,
            arguments={"method": self.method}, proposed=refused, kept=kept,
            outcome={"before": self.before, "after": self.after, "before_tokens": self.before_tokens,
                     "after_tokens": self.after_tokens, "before_score": self.before_score,
                     "after_score": self.after_score, "accepted": self.accepted, "method": self.method},
        )


def fit_to_budget(ctx: ArpoContext, reference_sha256: str, prompt: str) -> Compression | None:
    """A first prompt longer than the budget, cut to the whole phrases the model reads (None when it
    fits): the model never sees what lies past its window, so only the phrase the window cuts in two
    changes what it reads."""
    t2i = ctx.models.text_to_image
    budget, tokens = t2i.token_budget(), t2i.count_tokens(prompt)
    if tokens <= budget:
        return None
    started = time.perf_counter()
    kept: list[str] = []
    for phrase in prompt_phrases(prompt):
        if t2i.count_tokens(join_prompt("", [*kept, phrase])) > budget:
            break
        kept.append(phrase)
    after = join_prompt("", kept) or t2i.truncate(prompt)
    scorer = _Scorer(ctx, reference_sha256)
    return Compression(before=prompt, after=after, before_tokens=tokens, after_tokens=t2i.count_tokens(after),
                       before_score=scorer.score(prompt), after_score=scorer.score(after), method="fit",
                       seconds=time.perf_counter() - started)


def needs_compression(ctx: ArpoContext, prompt: str, refused: list[str]) -> bool:
    """Whether candidates were refused for want of room, or the prompt has almost none left."""
    t2i = ctx.models.text_to_image
    return bool(refused) or t2i.count_tokens(prompt) >= t2i.token_budget() - NEAR_BUDGET_TOKENS


def compress(ctx: ArpoContext, reference_sha256: str, prompt: str, *, refused: list[str], pinned: list[str]) -> Compression:
    """The best shorter prompt found (by the LLM when there is one, else offline), scored both ways."""
    started = time.perf_counter()
    t2i = ctx.models.text_to_image
    scorer = _Scorer(ctx, reference_sha256)
    tokens, budget = t2i.count_tokens(prompt), t2i.token_budget()
    wanted = max(int(budget * ROOM_WANTED), _room_for_one(t2i, prompt, refused))
    before_score = scorer.score(prompt)
    rewrite, method = None, "llm"
    if ctx.brains.llm is not None:
        rewrite = _llm_rewrite(ctx, prompt, tokens=tokens, budget=budget, target=max(tokens - wanted, 1), pinned=pinned)
    if rewrite is None or t2i.count_tokens(rewrite) >= tokens or scorer.score(rewrite) < before_score:
        rewrite, method = _offline_rewrite(scorer, prompt, wanted=wanted, pinned=pinned, t2i=t2i), "offline"
    after = rewrite
    return Compression(
        before=prompt, after=after, before_tokens=tokens, after_tokens=t2i.count_tokens(after),
        before_score=before_score, after_score=scorer.score(after), method=method,
        seconds=time.perf_counter() - started,
    )


class _Scorer:
    """CLIP text-image similarity of prompts (as the text-to-image model reads them) to the reference."""

    def __init__(self, ctx: ArpoContext, reference_sha256: str) -> None:
        self._t2i, self._clip = ctx.models.text_to_image, ctx.models.clip
        self._reference = ctx.reference(reference_sha256).embedding
        self._known: dict[str, float] = {}

    def score(self, prompt: str) -> float:
        return self.scores([prompt])[0]

    def scores(self, prompts: list[str]) -> list[float]:
        fresh = [prompt for prompt in dict.fromkeys(prompts) if prompt not in self._known]
        if fresh:
            values = self._clip.text_image_similarity(self._reference, [self._t2i.truncate(p) for p in fresh])
            self._known.update(zip(fresh, values))
        return [self._known[prompt] for prompt in prompts]


def _room_for_one(t2i, prompt: str, refused: list[str]) -> int:
    """Tokens the shortest refused candidate would need on top of the prompt (0 when none was refused)."""
    tokens = t2i.count_tokens(prompt)
    return min((t2i.count_tokens(join_prompt(prompt, [phrase])) - tokens for phrase in refused), default=0)


def _llm_rewrite(ctx: ArpoContext, prompt: str, *, tokens: int, budget: int, target: int, pinned: list[str]) -> str | None:
    """The LLM's shorter prompt, or None when it gave none or dropped a pinned phrase."""
    rewrite = ctx.prompt_compressor.compress(prompt, tokens=tokens, budget=budget, target=target, keep=pinned)
    if rewrite is None or any(not has_phrase(rewrite, phrase) for phrase in pinned):
        return None
    return rewrite


def _offline_rewrite(scorer: _Scorer, prompt: str, *, wanted: int, pinned: list[str], t2i) -> str:
    """Drop, one at a time, the phrase whose removal leaves the highest score, while that score is no
    lower than the current one and until `wanted` tokens are free."""
    phrases = prompt_phrases(prompt)
    start_tokens = t2i.count_tokens(prompt)
    current, current_score = phrases, scorer.score(prompt)
    while len(current) > 1 and start_tokens - t2i.count_tokens(join_prompt("", current)) < wanted:
        droppable = [index for index, phrase in enumerate(current) if not any(has_phrase(phrase, p) for p in pinned)]
        if not droppable:
            break
        shorter = [current[:index] + current[index + 1:] for index in droppable]
        scores = scorer.scores([join_prompt("", option) for option in shorter])
        best = max(range(len(shorter)), key=lambda position: scores[position])
        if scores[best] < current_score:
            break  # every phrase left adds something
        current, current_score = shorter[best], scores[best]
    return join_prompt("", current)
