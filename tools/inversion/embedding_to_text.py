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


class PromptDistances:
    """Distances of prompts to a target embedding, each prompt encoded once however often it is asked."""

    def __init__(self, target: torch.Tensor, encoder: PromptEncoder):
        self.target = target
        self.encoder = encoder
        self._distances: dict[str, float] = {}

    def __len__(self) -> int:
        return len(self._distances)

    def distance(self, prompt: str) -> float:
        self.measure([prompt])
        return self._distances[prompt]

    def best(self, prompts: Sequence[str], count: int) -> list[str]:
        """The `count` nearest of `prompts` (blanks and repeats dropped), nearest first."""
        unique = list(dict.fromkeys(prompt for prompt in prompts if prompt))
        self.measure(unique)
        return sorted(unique, key=self._distances.__getitem__)[:count]

    def nearest(self) -> str:
        """The nearest prompt measured so far (the first measured among equals)."""
        return min(self._distances, key=self._distances.__getitem__)

    def measure(self, prompts: Sequence[str]) -> None:
        """Encode the prompts not measured yet (blanks skipped), in one batch."""
        new = [prompt for prompt in dict.fromkeys(prompts) if prompt and prompt not in self._distances]
        if not new:
            return
        distances = embedding_distance(self.target, self.encoder.encode_prompts(new))
        self._distances.update(zip(new, (float(d) for d in distances)))

