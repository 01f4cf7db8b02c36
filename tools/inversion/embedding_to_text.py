"""Embedding-to-text: the last step of EDITOR, turning an optimised text-encoder output back into words.

Two backends share this interface: the training-free search (`training_free_inverter.py`) and the
trained vec2text-style model (`trained_inverter.py`). Both judge a hypothesis the same way: encode it
with the pipeline's text encoder and measure how far that lands from the target embedding.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch


class PromptEncoder(Protocol):
    """Anything that turns prompts into the conditioning a generator reads ((n, tokens, width))."""

    def encode_prompts(self, prompts: Sequence[str]) -> torch.Tensor: ...


@dataclass
class TextRecovery:
    """The recovered prompt, its distance to the target, and how the search got there."""

    prompt: str
    distance: float
    start_distance: float
    """Distance of the best starting hypothesis, before any rewriting or correction."""
    rounds: list[dict[str, Any]] = field(default_factory=list)
    """Per round: best prompt and distance so far (plain JSON values)."""


RoundCallback = Callable[[dict[str, Any]], None]


class EmbeddingToText(Protocol):
    """A backend that finds a prompt whose encoding is near a target embedding."""

    name: str

    def recover(
        self,
        target: torch.Tensor,
        encoder: PromptEncoder,
        *,
        start_prompts: Sequence[str] = (),
        seed: int = 0,
        max_seconds: float | None = None,
        on_round: RoundCallback | None = None,
    ) -> TextRecovery: ...


def embedding_distance(target: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of each candidate's (tokens, width) embedding from the target's."""
    target = target.float().reshape(1, -1).to(candidates.device)
    return (candidates.float().reshape(len(candidates), -1) - target).pow(2).mean(dim=1)
