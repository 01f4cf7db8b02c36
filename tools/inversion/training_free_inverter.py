"""Embedding-to-text without a trained model: rewrite hypotheses and keep those that re-encode nearest.

Hypotheses start from the given prompts (EDITOR passes the caption), the phrase-bank phrases whose own
encoding is nearest the target, and, when a language model is at hand, its rewrites. Each round every
hypothesis in the beam is rewritten (a nearby phrase appended, a phrase or a word dropped, LLM
rewrites), all rewrites are encoded in batches, and the `beam_width` nearest to the target survive.
The search stops when a round brings no improvement, after `rounds` rounds, or at the time limit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from arpo.tools.inversion.embedding_to_text import HypothesisSearch, NextBeam, PromptDistances

Rewriter = Callable[[str, int], list[str]]
"""(current best prompt, how many) -> rewrites; e.g. an LLM asked for variations."""

DEFAULT_BANK_PHRASES = 300
"""Phrases taken from each clip-interrogator bank when no phrase list is given."""


@dataclass
class TrainingFreeInverter(HypothesisSearch):
    """Beam search over prompt rewrites, ranked by distance of their re-encoding to the target."""

    phrases: Sequence[str] | None = None
    """Phrases to build from; None takes the first phrases of each clip-interrogator bank."""
    pool_size: int = 48
    """How many phrases (nearest the target on their own) are tried as additions each round."""
    beam_width: int = 4
    rounds: int = 8
    rewriter: Rewriter | None = None
    rewrites_per_round: int = 4
    name: str = "training-free"
    stop_when_stalled = True  # a round that finds nothing nearer ends the search (module docstring)

    def _begin(
        self, target: torch.Tensor, scores: PromptDistances, start_prompts: Sequence[str]
    ) -> tuple[list[str], NextBeam]:
        pool = self._phrase_pool(scores, start_prompts)

        def rewrite_beam(beam: list[str]) -> list[str]:
            rewrites = [rewrite for prompt in beam for rewrite in self._rewrites(prompt, pool)]
            return scores.best(beam + rewrites, self.beam_width)

        return scores.best(list(start_prompts) + pool[:2], self.beam_width), rewrite_beam

    def _phrase_pool(self, scores: PromptDistances, start_prompts: Sequence[str]) -> list[str]:
        phrases = list(self.phrases) if self.phrases is not None else _bank_phrases()
        words = [word for prompt in start_prompts for word in prompt.replace(",", " ").split()]
        return scores.best(list(dict.fromkeys(phrases + words)), self.pool_size)

    def _rewrites(self, prompt: str, pool: list[str]) -> list[str]:
        parts = [part.strip() for part in prompt.split(",") if part.strip()]
        words = prompt.split()
        rewrites = [f"{prompt}, {phrase}" if prompt else phrase for phrase in pool if phrase not in parts]
        if len(parts) > 1:
            rewrites += [", ".join(parts[:i] + parts[i + 1 :]) for i in range(len(parts))]
        if len(words) > 1:
            rewrites += [" ".join(words[:i] + words[i + 1 :]) for i in range(len(words))]
        if self.rewriter is not None:
            rewrites += self.rewriter(prompt, self.rewrites_per_round)
        return [" ".join(rewrite.split()) for rewrite in rewrites if rewrite.strip()]


def _bank_phrases() -> list[str]:
    from arpo.tools.phrase_bank import load_phrase_bank

    banks = load_phrase_bank(max_phrases_per_bank=DEFAULT_BANK_PHRASES)
    return [phrase for phrases in banks.values() for phrase in phrases]


def llm_rewriter(backend) -> Rewriter:
    """Rewrites from a chat backend (an arpo.agents.brain.Brain): one variation per line."""

    def rewrite(prompt: str, count: int) -> list[str]:
        messages = [
            {
                "role": "system",
                "content": "You edit prompts for a text-to-image model. Reply with one prompt per line, nothing else.",
            },
            {
                "role": "user",
                "content": f"Write {count} close variations of this prompt, each changing or adding a few words:\n{prompt}",
            },
        ]
        reply = backend.complete(messages, role="inverter")
        lines = [line.strip().lstrip("-*0123456789.) ").strip() for line in reply.text.splitlines()]
        return [line for line in lines if line][:count]

    return rewrite
