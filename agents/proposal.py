"""The question every proposer answers: given the current prompt and what is still wrong, which
short phrases should the loop try adding next?

Both the LLM proposer and the offline (phrase-bank) proposer take this request, so it stays small,
plain and free of tensors or images (it may travel through graph state).
"""

from typing import Literal

from pydantic import BaseModel, Field

from arpo.core.phrases import DroppedPhrase

PHRASE_WORDS: tuple[int, int] = (2, 6)
"""How many words a proposed phrase may have (fewest, most): the one place the range is set. The
proposal template asks for it and phrase hygiene drops what falls outside it."""

CandidateSource = Literal["llm", "offline", "offline-fallback"]
"""Where a round's candidates came from: the LLM, the phrase banks (no LLM configured), or the phrase
banks because the LLM's replies held nothing usable even after a repair request."""


class ProposalRequest(BaseModel):
    """One round's request for candidate phrases."""

    current_prompt: str
    differences: str = ""  # what the comparer/differ found (empty for the offline brain)
    tried: list[str] = []  # phrases already proposed against this very prompt (not again)
    banned: list[str] = []  # phrases the person banned in a session (never)
    feedback: list[str] = []  # plain-language notes from the person, to address first
    max_candidates: int = 12
    min_words: int = PHRASE_WORDS[0]
    max_words: int = PHRASE_WORDS[1]


class Proposal(BaseModel):
    """What one round of proposing produced: the candidates, what was dropped, and from where."""

    phrases: list[str] = Field(default_factory=list)
    dropped: list[DroppedPhrase] = Field(default_factory=list)
    source: CandidateSource = "llm"
    unusable: str | None = None
    """Set when the LLM's replies held nothing usable (after the repair request): what was wrong.
    The caller then asks the offline proposer instead."""
