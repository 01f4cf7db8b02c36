"""The proposer that needs no language model: phrases from the banks, ranked by CLIP against the image.

It lets the ARPO loop run with no brain at all. It cannot read the differences (it has no language
understanding), so it looks at the reference image embedding, the current prompt and what was tried
before; a person's feedback in a session steers it through the notes' CLIP text embedding. Greedy
selection then decides which candidates stay.
"""

from collections.abc import Sequence
from pathlib import Path

import torch

from arpo.agents.proposal import ProposalRequest
from arpo.core.phrases import contains_words, phrase_key
from arpo.tools.clip_scorer import ClipScorer
from arpo.tools.phrase_bank import PhraseIndex, load_phrase_bank, shared_phrase_index

# With the tiny random scorer the ranking is meaningless anyway, so embedding all ~106k bank phrases
# (about a minute on two cores, repeated in every fresh $ARPO_HOME) buys nothing: take this many per bank.
TINY_SCORER_PHRASES_PER_BANK = 500


class OfflineProposer:
    """Candidate phrases for a round: the best unused phrases of each bank, best overall first.

    With no `index`, one index per clip-interrogator bank is built on first use (and cached on disk)
    and each bank contributes up to `per_bank` phrases, so one huge bank (flavors) cannot crowd out
    the small ones (mediums, movements). With an `index`, every candidate comes from it.
    `max_phrases_per_bank` limits how much of each bank is embedded; None means whole banks for a real
    scorer and the first `TINY_SCORER_PHRASES_PER_BANK` for the tiny one.
    """

    def __init__(
        self,
        scorer: ClipScorer,
        index: PhraseIndex | None = None,
        per_bank: int = 3,
        *,
        max_phrases_per_bank: int | None = None,
        cache_dir: Path | None = None,
    ):
        self.scorer = scorer
        self.per_bank = per_bank
        self.max_phrases_per_bank = max_phrases_per_bank
        if max_phrases_per_bank is None and scorer.is_tiny:
            self.max_phrases_per_bank = TINY_SCORER_PHRASES_PER_BANK
        self.cache_dir = cache_dir
        self._indexes: dict[str, PhraseIndex] | None = {"index": index} if index is not None else None

    def propose(
        self, request: ProposalRequest, reference_embedding: torch.Tensor | Sequence[float]
    ) -> list[str]:
        """Up to `request.max_candidates` new phrases, most similar to the reference image first.

        Never returns a phrase from `request.tried` or `request.banned`, nor one already present in
        the current prompt.
        """
        used = _UsedPhrases(request.current_prompt, [*request.tried, *request.banned])
        query = self._steered_by_feedback(reference_embedding, request.feedback)
        indexes = self._bank_indexes()
        per_source = request.max_candidates if len(indexes) == 1 else self.per_bank
        scored: list[tuple[str, float]] = []
        for index in indexes.values():
            scored.extend(_best_unused(index, query, per_source, used))
        scored.sort(key=lambda phrase_and_score: phrase_and_score[1], reverse=True)
        return _distinct([phrase for phrase, _ in scored])[: request.max_candidates]

    def _steered_by_feedback(
        self, reference_embedding: torch.Tensor | Sequence[float], feedback: Sequence[str]
    ) -> torch.Tensor:
        """The reference embedding, pulled halfway towards the person's notes when there are any.

        With no language model, the notes' CLIP text embedding is the only way to hear them: phrases
        near both the image and the notes rank first.
        """
        reference = torch.as_tensor(reference_embedding, dtype=torch.float32).flatten()
        notes = [note.strip() for note in feedback if note.strip()]
        if not notes:
            return reference
        reference = reference / reference.norm().clamp_min(1e-12)
        wished = self.scorer.encode_texts(["; ".join(notes)])[0].float().flatten().to(reference.device)
        wished = wished / wished.norm().clamp_min(1e-12)
        steered = reference + wished
        return steered / steered.norm().clamp_min(1e-12)

    def _bank_indexes(self) -> dict[str, PhraseIndex]:
        if self._indexes is None:
            banks = load_phrase_bank(max_phrases_per_bank=self.max_phrases_per_bank)
            self._indexes = {
                # Shared per process: a batch or an evaluation builds each bank's index once, not per run.
                name: shared_phrase_index(self.scorer, phrases, self.cache_dir) for name, phrases in banks.items()
            }
        return self._indexes


class _UsedPhrases:
    """Phrases that must not be proposed: tried before, banned, or already in the prompt.

    `tried` is handed to the index as given (it excludes under its own comparison); membership here
    uses `phrase_key`, the loop's one notion of "the same phrase".
    """

    def __init__(self, prompt: str, tried: Sequence[str]):
        self._prompt = phrase_key(prompt)
        self.tried = list(tried)
        self._tried_keys = {phrase_key(phrase) for phrase in tried}

    def __contains__(self, phrase: str) -> bool:
        normalized = phrase_key(phrase)
        if not normalized or normalized in self._tried_keys:
            return True
        # "Already in the prompt" means present as whole words, so "oil" is not blocked by "toil".
        return contains_words(self._prompt, normalized)


def _best_unused(
    index: PhraseIndex, reference_embedding: torch.Tensor | Sequence[float], wanted: int, used: _UsedPhrases
) -> list[tuple[str, float]]:
    """The `wanted` best phrases of one index that are not used.

    Tried phrases are excluded inside the index; phrases found in the prompt are filtered afterwards,
    asking for more until enough are found or the index runs out.
    """
    request_size = wanted
    while True:
        ranked = index.top_k(reference_embedding, request_size, exclude=used.tried)
        fresh = [(phrase, score) for phrase, score in ranked if phrase not in used]
        if len(fresh) >= wanted or len(ranked) < request_size:
            return fresh[:wanted]
        request_size *= 2


def _distinct(phrases: Sequence[str]) -> list[str]:
    seen: set[str] = set()
    distinct = []
    for phrase in phrases:
        key = phrase_key(phrase)
        if key not in seen:
            seen.add(key)
            distinct.append(phrase)
    return distinct
