"""Embedding-to-text: the last step of EDITOR, turning an optimised text-encoder output back into words.

Two backends share this interface: the training-free search (`training_free_inverter.py`) and the
trained vec2text-style model (`trained_inverter.py`). Both judge a hypothesis the same way: encode it
with the pipeline's text encoder and measure how far that lands from the target embedding. Both also
search the same way, in rounds that each turn a beam of hypotheses into a nearer one (`HypothesisSearch`);
they differ only in where the first hypotheses come from and how a round rewrites them.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

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


NextBeam = Callable[[list[str]], list[str]]
"""One round of a search: the beam, nearest first -> the next beam, nearest first."""


class HypothesisSearch(ABC):
    """An `EmbeddingToText` backend that searches in rounds: a first beam of hypotheses, then rounds that
    each turn the beam into the next, until `rounds` rounds, the time limit, or (with `stop_when_stalled`)
    a round that brings the best hypothesis no nearer. The best hypothesis of the last beam is recovered."""

    name: str
    rounds: int
    """At most this many rounds after the first beam."""
    stop_when_stalled: ClassVar[bool] = False
    """Stop at the first round whose best is no nearer than the one before."""

    def recover(
        self,
        target: torch.Tensor,
        encoder: PromptEncoder,
        *,
        start_prompts: Sequence[str] = (),
        seed: int = 0,
        max_seconds: float | None = None,
        on_round: RoundCallback | None = None,
    ) -> TextRecovery:
        started = time.perf_counter()
        scores = PromptDistances(target, encoder)
        with torch.random.fork_rng(devices=[]):  # seeded, and the caller's random stream left as it was
            torch.manual_seed(seed)
            beam, next_beam = self._begin(target, scores, start_prompts)
            start_distance = scores.distance(beam[0])
            rounds: list[dict[str, Any]] = []
            for index in range(self.rounds):
                if max_seconds is not None and time.perf_counter() - started >= max_seconds:
                    break
                previous = scores.distance(beam[0])
                beam = next_beam(beam)
                summary = {"round": index, "prompt": beam[0], "distance": scores.distance(beam[0]), "tried": len(scores)}
                rounds.append(summary)
                if on_round is not None:
                    on_round(summary)
                if self.stop_when_stalled and summary["distance"] >= previous:
                    break
        return TextRecovery(beam[0], scores.distance(beam[0]), start_distance, rounds)

    @abstractmethod
    def _begin(
        self, target: torch.Tensor, scores: PromptDistances, start_prompts: Sequence[str]
    ) -> tuple[list[str], NextBeam]:
        """The first beam (nearest first, measured in `scores`) and the round that improves a beam."""
