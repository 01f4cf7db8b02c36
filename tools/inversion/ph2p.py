"""PH2P ("Prompting Hard or Hardly Prompting", Mahajan et al. 2024): a hard prompt found with the
diffusion model's own denoising loss.

Token-slot vectors in the pipeline's text-encoder input space condition the UNet, which must predict
the noise added to the reference latent at a timestep from the later, semantic part of the schedule.
L-BFGS updates the vectors in continuous space and only then are they projected onto the vocabulary
("delayed projection"); each step's projected prompt becomes a candidate. At the end the best
candidates (by their own denoising loss) are regenerated with the run's seed and the one whose image
is closest to the reference in CLIP space is returned.

`projection="immediate"` is the ablation the paper compares against: the loss is taken at the
projected tokens (straight-through, as PEZ does) inside every L-BFGS evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import torch

from arpo.errors import InvalidInputError
from arpo.tools.inversion.base import InversionBudget, InversionResult, OnStep
from arpo.tools.inversion.diffusion_parts import DiffusionParts
from arpo.tools.inversion.trajectory import TrajectoryTracker
from arpo.tools.inversion.vocabulary_projection import (
    VocabularyProjector,
    decode_tokens,
    slot_token_ids,
    substituted_slots,
    undecodable_token_ids,
)

if TYPE_CHECKING:
    from PIL import Image

    from arpo.tools.model_stack import ModelStack

# Defaults of the paper's public code: 15 token slots, L-BFGS with up to 20 inner iterations, timesteps
# drawn uniformly from [500, 900) of a 1000-step training schedule.
DEFAULT_PROMPT_LEN = 15
DEFAULT_LBFGS_ITERATIONS = 20
DEFAULT_TIMESTEPS = (500, 900)
DEFAULT_STEPS = 1000
DEFAULT_RESCORED = 3

Projection = Literal["delayed", "immediate"]


@dataclass
class Ph2pInverter:
    """PH2P against the stack's text-to-image pipeline; `budget` applies when `invert` is given none."""

    prompt_len: int = DEFAULT_PROMPT_LEN
    lbfgs_iterations: int = DEFAULT_LBFGS_ITERATIONS
    lr: float = 1.0
    timesteps: tuple[int, int] = DEFAULT_TIMESTEPS
    """Range of timesteps, out of 1000 (rescaled to the scheduler's own training length)."""
    projection: Projection = "delayed"
    rescored: int = DEFAULT_RESCORED
    """How many candidates (lowest denoising loss first) are regenerated and compared by CLIP."""
    budget: InversionBudget = field(default_factory=InversionBudget)
    name: str = "ph2p"

    def invert(
        self,
        reference: Image.Image,
        models: ModelStack,
        *,
        seed: int = 0,
        budget: InversionBudget | None = None,
        on_step: OnStep | None = None,
    ) -> InversionResult:
        parts = DiffusionParts(models.text_to_image, "PH2P")
        if self.prompt_len + 2 > parts.context_length:
            raise InvalidInputError(f"PH2P prompt length {self.prompt_len} does not fit {parts.context_length - 2} tokens")
        tracker = TrajectoryTracker(budget or self.budget, DEFAULT_STEPS, on_step)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            search = _Search(self, parts, parts.reference_latents(reference), torch.Generator().manual_seed(seed))
            while tracker.may_continue():
                outcome = search.step()
                tracker.record(outcome.pop("loss"), outcome.pop("prompt"), **outcome)
            ranked = self._rescore(search.best_candidates(self.rescored), reference, models, seed)
        prompt, clip_i = ranked[0] if ranked else ("", None)
        return InversionResult(
            method=self.name,
            prompt=prompt,
            score=clip_i,
            steps=tracker.steps,
            seconds=tracker.seconds,
            details={
                "rescored": [{"prompt": p, "clip_i": s} for p, s in ranked],
                "final_token_ids": search.last_ids,
                "prompt_len": self.prompt_len,
                "projection": self.projection,
                "lbfgs_iterations": self.lbfgs_iterations,
                "timesteps": list(self.timesteps),
                "stopped_because": tracker.stop_reason(),
            },
        )

    def _rescore(self, prompts: list[str], reference: Image.Image, models: ModelStack, seed: int) -> list[tuple[str, float]]:
        """Candidates by CLIP image similarity of their regenerated image to the reference, best first."""
        if not prompts:
            return []
        clip = models.clip
        reference_embedding = clip.encode_images([reference])[0]
        images = [models.text_to_image.generate(prompt, seed) for prompt in prompts]
        embeddings = clip.encode_images(images)
        scores = [clip.image_similarity(reference_embedding, embedding) for embedding in embeddings]
        return sorted(zip(prompts, scores), key=lambda pair: -pair[1])


class _Search:
    """The optimisation state of one PH2P run: continuous slots, their optimiser, the candidates."""

    def __init__(self, settings: Ph2pInverter, parts: DiffusionParts, latents: torch.Tensor, generator: torch.Generator):
        self.settings = settings
        self.parts = parts
        self.latents = latents
        self.generator = generator
        start, end, pad = parts.markers
        self.markers = {"start_id": start, "end_id": end, "pad_id": pad, "context_length": parts.context_length}
        self.projector = VocabularyProjector(
            parts.token_embedding.weight, banned_ids={start, end, pad, *undecodable_token_ids(parts.tokenizer)}
        )
        start_ids = self.projector.random_ids(settings.prompt_len, generator)
        self.soft = self.projector.embed(start_ids).float().requires_grad_(True)
        self.last_ids = [int(token) for token in start_ids.tolist()]
        self.optimizer = torch.optim.LBFGS(
            [self.soft], lr=settings.lr, max_iter=settings.lbfgs_iterations, line_search_fn="strong_wolfe"
        )
        self.candidates: dict[str, float] = {}
        low, high = settings.timesteps
        scale = parts.train_timesteps() / 1000
        self.timestep_range = (int(low * scale), max(int(low * scale) + 1, int(high * scale)))

    def step(self) -> dict:
        """One L-BFGS step at a freshly drawn timestep and noise, then the projection."""
        timestep, noisy, target = self._draw_noise()
        start_ids = self.projector.nearest(self.soft)

        def closure() -> torch.Tensor:
            self.optimizer.zero_grad(set_to_none=True)
            loss = self._loss(self._conditioning_vectors(), start_ids, timestep, noisy, target)
            loss.backward()
            return loss

        before = float(self.optimizer.step(closure).detach())
        with torch.no_grad():
            ids, hard = self.projector.project(self.soft)
            hard_loss = float(self._loss(hard, ids, timestep, noisy, target))
            after = float(self._loss(self._conditioning_vectors(), ids, timestep, noisy, target))
        prompt = decode_tokens(self.parts.tokenizer, ids)
        self.last_ids = [int(token) for token in ids.tolist()]
        if prompt and hard_loss < self.candidates.get(prompt, float("inf")):
            self.candidates[prompt] = hard_loss
        return {
            "loss": hard_loss,
            "prompt": prompt,
            "timestep": int(timestep),
            "optimised_loss_before": before,
            "optimised_loss_after": after,
        }

    def best_candidates(self, count: int) -> list[str]:
        return sorted(self.candidates, key=self.candidates.__getitem__)[: max(1, count)]

    def _conditioning_vectors(self) -> torch.Tensor:
        """What the loss sees: the continuous slots (delayed) or their projection (immediate)."""
        if self.settings.projection == "delayed":
            return self.soft
        _, hard = self.projector.project(self.soft)
        return self.soft + (hard - self.soft).detach()  # value of the tokens, gradient to the slots

    def _draw_noise(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        low, high = self.timestep_range
        timestep = torch.randint(low, high, (1,), generator=self.generator)
        noise = torch.randn(self.latents.shape, generator=self.generator).to(self.latents.device)
        timestep = timestep.to(self.latents.device)
        noisy = self.parts.scheduler.add_noise(self.latents, noise, timestep)
        return timestep, noisy, self.parts.noise_target(self.latents, noise, timestep)

    def _loss(self, vectors: torch.Tensor, ids: torch.Tensor, timestep, noisy, target) -> torch.Tensor:
        parts = self.parts
        token_ids = slot_token_ids(ids, **self.markers)
        with substituted_slots(parts.token_embedding, vectors):
            conditioning = parts.encode_ids(token_ids)
        prediction = parts.unet(noisy.to(parts.dtype), timestep, encoder_hidden_states=conditioning).sample
        return torch.nn.functional.mse_loss(prediction.float(), target.float())
