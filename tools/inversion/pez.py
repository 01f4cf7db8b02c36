"""PEZ ("Hard Prompts Made Easy", Wen et al. 2023): a hard prompt found against CLIP image–text similarity.

A few continuous vectors live in the CLIP text tower's token-embedding space. Each step projects them
onto their nearest vocabulary tokens, runs the text tower on those tokens, and applies the gradient
taken at the projected point to the continuous vectors (AdamW). The loss at each step is therefore the
loss of a real, decodable prompt, and the best such prompt by similarity is the result.

The vectors, AdamW's state and the loss are float32 even when the CLIP model runs in half precision;
a float16 model gets loss scaling, and a step whose gradient is not finite is skipped and marked in
the trajectory, never applied (`precision.GradientGuard`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from arpo.core.errors import InvalidInputError
from arpo.tools.inversion.base import InversionResult
from arpo.tools.inversion.precision import GradientGuard
from arpo.tools.inversion.trajectory import BudgetedInverter, StartTracking, TrajectoryTracker
from arpo.tools.inversion.vocabulary_projection import (
    VocabularyProjector,
    decode_tokens,
    slot_token_ids,
    substituted_slots,
    undecodable_token_ids,
)

if TYPE_CHECKING:
    from typing import ContextManager

    from PIL import Image

    from arpo.tools.clip_scorer import ClipScorer
    from arpo.tools.model_stack import ModelStack

# The PEZ paper's public defaults.
DEFAULT_PROMPT_LEN = 16
DEFAULT_STEPS = 3000
DEFAULT_LR = 0.1
DEFAULT_WEIGHT_DECAY = 0.1


@dataclass
class PezInverter(BudgetedInverter):
    """PEZ against the run's CLIP scorer."""

    prompt_len: int = DEFAULT_PROMPT_LEN
    lr: float = DEFAULT_LR
    weight_decay: float = DEFAULT_WEIGHT_DECAY
    name: str = "pez"
    default_steps = DEFAULT_STEPS

    def _held_models(self, models: ModelStack) -> ContextManager[None]:
        return models.clip.turn()  # PEZ optimises through the scorer's own text tower

    def _invert(
        self, reference: Image.Image, models: ModelStack, seed: int, start_tracking: StartTracking
    ) -> InversionResult:
        clip = models.clip
        text = ClipTextTower(clip)
        if self.prompt_len + 2 > text.context_length:
            raise InvalidInputError(
                f"PEZ prompt length {self.prompt_len} does not fit CLIP's {text.context_length - 2} tokens"
            )
        target = clip.encode_images([reference])[0].to(text.device)
        tracker = start_tracking()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            best = self._optimise(text, target, tracker, torch.Generator().manual_seed(seed))
        return InversionResult(
            method=self.name,
            prompt=best.prompt,
            score=best.similarity,
            steps=tracker.steps,
            seconds=tracker.seconds,
            details={
                "token_ids": best.token_ids,
                "best_step": best.step,
                "prompt_len": self.prompt_len,
                "lr": self.lr,
                "weight_decay": self.weight_decay,
                "stopped_because": tracker.stop_reason(),
            },
        )

    def _optimise(
        self, text: ClipTextTower, target: torch.Tensor, tracker: TrajectoryTracker, generator: torch.Generator
    ) -> _BestPrompt:
        start_ids = text.projector.random_ids(self.prompt_len, generator)
        soft = text.projector.embed(start_ids).float().requires_grad_(True)
        optimizer = torch.optim.AdamW([soft], lr=self.lr, weight_decay=self.weight_decay)
        guard = GradientGuard(text.embedding.weight.dtype, "PEZ")
        best = _BestPrompt()
        while tracker.may_continue():
            ids, hard = text.projector.project(soft)
            hard = hard.float().requires_grad_(True)
            similarity = torch.nn.functional.cosine_similarity(
                text.encode(hard, ids).float(), target.float().unsqueeze(0)
            ).mean()
            loss = 1.0 - similarity
            gradient = guard.gradient(loss, hard)
            similarity = float(similarity.detach())
            details: dict = {"similarity": similarity}
            if gradient is not None:
                optimizer.zero_grad(set_to_none=True)
                soft.grad = gradient
                optimizer.step()
                guard.applied()
            else:
                details.update(guard.skip(tracker.taken))
            prompt = text.decode(ids)
            if math.isfinite(similarity):
                best.consider(tracker.taken, similarity, prompt, ids)
            tracker.record(1.0 - similarity if math.isfinite(similarity) else None, prompt, **details)
        return best


@dataclass
class _BestPrompt:
    step: int = -1
    similarity: float = float("-inf")
    prompt: str = ""
    token_ids: list[int] = field(default_factory=list)

    def consider(self, step: int, similarity: float, prompt: str, ids: torch.Tensor) -> None:
        if similarity > self.similarity:
            self.step, self.similarity, self.prompt = step, similarity, prompt
            self.token_ids = [int(token) for token in ids.flatten().tolist()]


class ClipTextTower:
    """An open_clip text tower that can be run on token-slot vectors instead of token ids."""

    def __init__(self, clip: ClipScorer):
        model = clip.model
        embedding = getattr(model, "token_embedding", None)
        if not isinstance(embedding, torch.nn.Embedding):
            raise InvalidInputError(
                f"PEZ needs a CLIP text tower with a token-embedding table; {clip.name} has none"
            )
        self.clip = clip
        self.model = model
        self.embedding = embedding
        self.device = embedding.weight.device
        self.context_length = clip.context_length
        self.start_id, self.end_id = _markers(clip.tokenizer)
        banned = {self.start_id, self.end_id, 0, *undecodable_token_ids(clip.tokenizer)}
        self.projector = VocabularyProjector(embedding.weight, banned_ids=banned)

    def encode(self, slots: torch.Tensor, slot_ids: torch.Tensor) -> torch.Tensor:
        """Normalised text embedding of [start, slots, end] (slot ids only place the end marker)."""
        ids = slot_token_ids(
            slot_ids, start_id=self.start_id, end_id=self.end_id, pad_id=0, context_length=self.context_length
        )
        with torch.enable_grad(), substituted_slots(self.embedding, slots):
            return self.model.encode_text(ids, normalize=True).float()

    def decode(self, token_ids: torch.Tensor) -> str:
        return decode_tokens(self.clip.tokenizer, token_ids)


def _markers(tokenizer: Any) -> tuple[int, int]:
    """Start and end token ids of an open_clip tokenizer (simple BPE or a wrapped transformers one)."""
    start, end = getattr(tokenizer, "sot_token_id", None), getattr(tokenizer, "eot_token_id", None)
    wrapped = getattr(tokenizer, "tokenizer", None)
    if (start is None or end is None) and wrapped is not None:
        start, end = wrapped.bos_token_id, wrapped.eos_token_id
    if start is None or end is None:
        raise InvalidInputError(f"PEZ cannot find the start/end tokens of {type(tokenizer).__name__}")
    return int(start), int(end)
