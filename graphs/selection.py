"""Greedy prompt selection (Algorithm 8 of the ARPO thesis), kept inside the T2I token budget.

Each round scores every remaining candidate appended to the prompt built so far, in one batched call
of ``score_prompts``; the best one is taken out of the pool and kept only if it does not lower the best
score seen. Candidates that would push the prompt past what the T2I text encoder reads are never
scored: they are reported as over budget, so the history shows why they were left out.

The scorer has a window of its own. CLIP reads 77 tokens, while PixArt's T5 encoder reads 120: a
candidate appended past CLIP's window would be scored on a text that does not contain it, tie with
the unchanged prompt and be "selected" unseen. So a candidate whose prompt the scorer cannot read in
full is never scored either; its verdict says "past the scorer's 77-token window".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from arpo.core.phrases import join_prompt, phrase_key, prompt_phrase, prompt_phrases
from arpo.storage.records import CandidateRecord

if TYPE_CHECKING:
    from arpo.tools.model_stack import ModelStack

ScorePrompts = Callable[[list[str]], list[float]]
"""Scores prompts against the reference image in one batch (CLIP text–image cosine similarity)."""
FitsBudget = Callable[[str], bool]
"""Whether the T2I model's tokenizer would read a prompt without truncating it."""
OVER_BUDGET = "over budget"
DUPLICATE = "duplicate"


@dataclass(frozen=True)
class ScorerWindow:
    """What the scorer reads: `fits(prompt)` says whether it sees the whole prompt, `tokens` is its
    context length (77 for CLIP), for the reason recorded with candidates it cannot see."""

    fits: FitsBudget
    tokens: int

    @property
    def reason(self) -> str:
        return f"past the scorer's {self.tokens}-token window"


@dataclass
class SelectionOutcome:
    """Result of one greedy selection over one iteration's candidates."""

    prompt: str
    """The prompt with the selected phrases appended."""
    selected: list[str]
    verdicts: list[CandidateRecord]
    start_score: float
    """Score of the unchanged prompt (s_max before the first round)."""
    best_score: float
    scoring_calls: int
    """Batched scoring calls made (one per round, plus one for the starting prompt)."""
    over_budget: list[str] = field(default_factory=list)
    past_scorer_window: list[str] = field(default_factory=list)
    """Candidates left unscored because the scorer would not have seen them (see ScorerWindow)."""
    compressed: bool = False
    """The prompt was rewritten shorter (no worse by CLIP) to make room for refused candidates."""

    def after_compression(self, retried: SelectionOutcome) -> SelectionOutcome:
        """This outcome once the prompt was compressed and the refused candidates were selected again
        on it (`retried`): the retry's prompt, verdicts and scores stand for the phrases it judged."""
        judged = {verdict.phrase: verdict for verdict in retried.verdicts}
        return SelectionOutcome(
            prompt=retried.prompt,
            selected=self.selected + retried.selected,
            verdicts=[judged.get(verdict.phrase, verdict) if verdict.phrase in self.over_budget else verdict
                      for verdict in self.verdicts],
            start_score=self.start_score,
            best_score=max(self.best_score, retried.best_score),
            scoring_calls=self.scoring_calls + retried.scoring_calls,
            over_budget=retried.over_budget,
            past_scorer_window=self.past_scorer_window + retried.past_scorer_window,
            compressed=True,
        )


def greedy_select(
    prompt: str,
    candidates: list[str],
    score_prompts: ScorePrompts,
    fits_budget: FitsBudget = lambda _prompt: True,
    scorer_window: ScorerWindow | None = None,
    start_score: float | None = None,
) -> SelectionOutcome:
    """Choose the subset of ``candidates`` that raises the prompt's score, as in Algorithm 8.

    Candidates past the T2I budget (``fits_budget``) or past the scorer's window (``scorer_window``,
    None when the scorer reads at least as far as the T2I model) are left out, with their reason.
    ``start_score``: the prompt's own score when it is already known, so it is not scored again.
    """
    verdicts, pool = _screen(prompt, candidates)
    scoring_calls = 0
    if start_score is None:
        start_score, scoring_calls = score_prompts([prompt])[0], 1
    best_score = start_score
    chosen: list[str] = []
    decided: list[CandidateRecord] = []
    while pool:
        pool = _drop_unfitting(prompt, chosen, pool, fits_budget, OVER_BUDGET)
        if scorer_window is not None:
            pool = _drop_unfitting(prompt, chosen, pool, scorer_window.fits, scorer_window.reason)
        if not pool:
            break
        trial_scores = score_prompts([join_prompt(prompt, chosen + [v.phrase]) for v in pool])
        scoring_calls += 1
        top = max(range(len(pool)), key=trial_scores.__getitem__)
        verdict = pool.pop(top)
        decided.append(verdict)
        verdict.score = trial_scores[top]
        if verdict.score >= best_score:
            verdict.selected, verdict.reason = True, "selected"
            chosen.append(verdict.phrase)
        else:
            verdict.reason = "no gain"
        best_score = max(best_score, verdict.score)
    # Verdicts in the order they were decided (so selected ones read in the order they joined the
    # prompt), then those never scored, in the order they were proposed.
    undecided = [v for v in verdicts if all(v is not d for d in decided)]
    return SelectionOutcome(
        prompt=join_prompt(prompt, chosen),
        selected=chosen,
        verdicts=decided + undecided,
        start_score=start_score,
        best_score=best_score,
        scoring_calls=scoring_calls,
        over_budget=[v.phrase for v in undecided if v.reason == OVER_BUDGET],
        past_scorer_window=[v.phrase for v in undecided if scorer_window is not None and v.reason == scorer_window.reason],
    )


def select_for_models(
    models: ModelStack, reference_embedding: Any, prompt: str, candidates: list[str], start_score: float | None = None
) -> SelectionOutcome:
    """Greedy selection with a run's models: CLIP text-image similarity of each prompt as the
    text-to-image model will read it, inside its token budget and the scorer's window. `start_score`
    is the prompt's CLIP-T when its render already measured it (the same forward on the same text)."""
    t2i, clip = models.text_to_image, models.clip
    budget = t2i.token_budget()
    return greedy_select(
        prompt,
        candidates,
        score_prompts=lambda prompts: clip.text_image_similarity(reference_embedding, [t2i.truncate(p) for p in prompts]),
        fits_budget=lambda candidate: t2i.count_tokens(candidate) <= budget,
        # CLIP reads 77 tokens where PixArt's T5 reads 120: never keep a phrase the scorer did not see.
        scorer_window=ScorerWindow(fits=lambda candidate: clip.sees_all(t2i.truncate(candidate)), tokens=clip.context_length),
        start_score=start_score,
    )


def _screen(prompt: str, candidates: list[str]) -> tuple[list[CandidateRecord], list[CandidateRecord]]:
    """Clean the candidates; repeats and phrases the prompt already has never reach scoring."""
    seen = {phrase_key(p) for p in prompt_phrases(prompt)}
    verdicts: list[CandidateRecord] = []
    pool: list[CandidateRecord] = []
    for raw in candidates:
        phrase = prompt_phrase(raw)
        verdict = CandidateRecord(phrase=phrase or raw)
        verdicts.append(verdict)
        key = phrase_key(phrase)
        if not key or key in seen:
            verdict.reason = DUPLICATE
            continue
        seen.add(key)
        pool.append(verdict)
    return verdicts, pool


def _drop_unfitting(
    prompt: str, chosen: list[str], pool: list[CandidateRecord], fits: FitsBudget, reason: str
) -> list[CandidateRecord]:
    """The candidates whose extended prompt `fits`; the others get `reason` and leave the pool."""
    fitting = []
    for verdict in pool:
        if fits(join_prompt(prompt, chosen + [verdict.phrase])):
            fitting.append(verdict)
        else:
            verdict.reason = reason
    return fitting
