"""The question every proposer answers: given the current prompt and what is still wrong, which
short phrases should the loop try adding next?

Both the LLM proposer and the offline (phrase-bank) proposer take this request, so it stays small,
plain and free of tensors or images (it may travel through graph state).
"""

from pydantic import BaseModel


class ProposalRequest(BaseModel):
    """One round's request for candidate phrases."""

    current_prompt: str
    differences: str = ""  # what the comparer/differ found (empty for the offline brain)
    tried: list[str] = []  # phrases proposed in earlier iterations (never propose again)
    feedback: list[str] = []  # plain-language notes from the person, to address first
    max_candidates: int = 12
