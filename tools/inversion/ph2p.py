"""PH2P ("Prompting Hard or Hardly Prompting", Mahajan et al. 2024): a hard prompt found with the
diffusion model's own denoising loss.

Token-slot vectors in the pipeline's text-encoder input space condition the UNet, which must predict
the noise added to the reference latent at a timestep from the later, semantic part of the schedule
([500, 900) of 1000 by default).

`projection="delayed"` (the method): each step, L-BFGS updates the vectors in continuous space, and
only after that update are they projected onto the vocabulary and snapped back to those tokens'
embeddings. Every step therefore starts from a point a written prompt can reach, and each step's
tokens are a candidate prompt.

`projection="immediate"` is the paper's first-order baseline: the vectors are projected before every
gradient step, the gradient is taken at the projected tokens and applied to the continuous vectors
(straight through, as PEZ does). The continuous vectors are not snapped, so small steps accumulate
until they cross into another token.

At the end the candidates are put in order by their denoising loss averaged over a fixed set of
timesteps and noises (the same for every candidate, so the order depends on the prompts alone, not on
which random timestep a step happened to draw); the best few are regenerated with the run's seed and
the one whose image is closest to the reference in CLIP space is returned.

Deliberate choices, where this departs from the paper or fills in what it leaves open, and why:
- A fresh L-BFGS each step. Snapping moves the vectors after the optimiser's update and every step
  draws a new timestep and noise, so curvature pairs kept from the previous step would describe
  neither the current point nor the current objective.
- The first-order baseline uses Adam (as PEZ does) rather than plain SGD: its step size does not
  depend on the gradient's scale, which differs by orders of magnitude between model sizes.
- Only a shortlist (`rescored`, ranked by the averaged loss) is regenerated for CLIP re-ranking, not
  every saved prompt as the authors' selection script does: each regeneration is a full sampling run.
- Vectors, optimiser state and losses are float32 whatever the models' dtype, with loss scaling for
  float16 models and non-finite gradients skipped (`precision.GradientGuard`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch

from arpo.core.errors import InvalidInputError
from arpo.tools.devices import dtype_name
from arpo.tools.inversion.base import InversionResult
from arpo.tools.inversion.diffusion_parts import DiffusionParts
from arpo.tools.inversion.precision import GradientGuard, NonFiniteGradient
from arpo.tools.inversion.trajectory import PipelineInverter, StartTracking
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
DEFAULT_RANKING_TIMESTEPS = 4
DEFAULT_FIRST_ORDER_LR = 0.1
# The ranking noises come from their own stream, so drawing them does not shift the search's draws.
_RANKING_SEED_OFFSET = 1_000_003

Projection = Literal["delayed", "immediate"]


@dataclass
class Ph2pInverter(PipelineInverter):
    """PH2P against the stack's text-to-image pipeline."""

    prompt_len: int = DEFAULT_PROMPT_LEN
    lbfgs_iterations: int = DEFAULT_LBFGS_ITERATIONS
    lr: float = 1.0
    """L-BFGS learning rate (delayed projection)."""
    timesteps: tuple[int, int] = DEFAULT_TIMESTEPS
    """Range of timesteps, out of 1000 (rescaled to the scheduler's own training length)."""
    projection: Projection = "delayed"
    first_order_lr: float = DEFAULT_FIRST_ORDER_LR
    """Adam learning rate of the first-order baseline (immediate projection)."""
    ranking_timesteps: int = DEFAULT_RANKING_TIMESTEPS
    """How many fixed timesteps (evenly spread over `timesteps`) the shortlist's loss is averaged over."""
    rescored: int = DEFAULT_RESCORED
    """How many candidates (lowest averaged denoising loss first) are regenerated and compared by CLIP."""
    initial_prompt: str | None = None
    """Start the token slots from this prompt's tokens instead of random ones (refining a prompt); it
    takes as many slots as it has tokens, at least `prompt_len` when it has fewer."""
    name: str = "ph2p"
    default_steps = DEFAULT_STEPS

    def _invert(
        self, reference: Image.Image, models: ModelStack, seed: int, start_tracking: StartTracking
    ) -> InversionResult:
        tracker = start_tracking()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            search = self.start_search(reference, models, seed=seed)
            while tracker.may_continue():
                outcome = search.step(tracker.taken)
                tracker.record(outcome.pop("loss"), outcome.pop("prompt"), **outcome)
            shortlist = search.shortlist(self.rescored)
            ranked, renders = self._rescore([prompt for prompt, _ in shortlist], reference, models, seed)
        prompt, clip_i = ranked[0] if ranked else ("", None)
        return InversionResult(
            method=self.name,
            prompt=prompt,
            score=clip_i,
            steps=tracker.steps,
            seconds=tracker.seconds,
            details={
                "rescored": [{"prompt": p, "clip_i": s} for p, s in ranked],
                "shortlist": [{"prompt": p, "ranking_loss": loss} for p, loss in shortlist],
                "final_token_ids": search.token_ids,
                "prompt_len": len(search.token_ids),
                "projection": self.projection,
                "lbfgs_iterations": self.lbfgs_iterations,
                "timesteps": list(self.timesteps),
                "ranking_timesteps": search.ranking.timesteps.tolist(),
                "skipped_steps": search.guard.skipped,
                "model_dtype": dtype_name(search.parts.dtype),
                "stopped_because": tracker.stop_reason(),
            },
            rendered=renders.get(prompt),
        )

    def start_search(self, reference: Image.Image, models: ModelStack, *, seed: int = 0) -> Ph2pSearch:
        """The optimisation alone, ready to `step()`: what `invert` runs before its CLIP re-ranking
        (benchmarks time one step of it)."""
        parts = DiffusionParts(models.text_to_image, "PH2P")
        if self.prompt_len + 2 > parts.context_length:
            raise InvalidInputError(f"PH2P prompt length {self.prompt_len} does not fit {parts.context_length - 2} tokens")
        if self.ranking_timesteps < 1:
            raise InvalidInputError("PH2P needs at least one ranking timestep")
        return Ph2pSearch(self, parts, parts.reference_latents(reference), seed)

    def _rescore(
        self, prompts: list[str], reference: Image.Image, models: ModelStack, seed: int
    ) -> tuple[list[tuple[str, float]], dict[str, Image.Image]]:
        """Candidates by CLIP image similarity of their regenerated image to the reference, best first,
        and each candidate's image (the winner's is handed on, so it is not rendered again)."""
        if not prompts:
            return [], {}
        clip = models.clip
        reference_embedding = clip.encode_images([reference])[0]
        images = [models.text_to_image.generate(prompt, seed) for prompt in prompts]
        embeddings = clip.encode_images(images)
        scores = [clip.image_similarity(reference_embedding, embedding) for embedding in embeddings]
        return sorted(zip(prompts, scores), key=lambda pair: -pair[1]), dict(zip(prompts, images))


class Ph2pSearch:
    """The optimisation state of one PH2P run: token-slot vectors, their tokens, the candidates."""

    def __init__(self, settings: Ph2pInverter, parts: DiffusionParts, latents: torch.Tensor, seed: int):
        self.settings = settings
        self.parts = parts
        self.latents = latents
        self.generator = torch.Generator().manual_seed(int(seed))
        start, end, pad = parts.markers
        self.markers = {"start_id": start, "end_id": end, "pad_id": pad, "context_length": parts.context_length}
        self.projector = VocabularyProjector(
            parts.token_embedding.weight, banned_ids={start, end, pad, *undecodable_token_ids(parts.tokenizer)}
        )
        self.ids = self._starting_ids(settings)
        self.soft = self.projector.embed(self.ids).float().requires_grad_(True)  # the float32 master copy
        self.guard = GradientGuard(parts.dtype, "PH2P")
        self.first_order = (
            torch.optim.Adam([self.soft], lr=settings.first_order_lr) if settings.projection == "immediate" else None
        )
        low, high = settings.timesteps
        scale = parts.train_timesteps() / 1000
        self.timestep_range = (int(low * scale), max(int(low * scale) + 1, int(high * scale)))
        self.ranking = RankingSet(self, settings.ranking_timesteps, int(seed) + _RANKING_SEED_OFFSET)
        self.candidates: dict[str, float] = {}
        """Prompt -> its loss averaged over the ranking set (the lowest over the token sequences that
        decode to it)."""

    @property
    def token_ids(self) -> list[int]:
        return [int(token) for token in self.ids.tolist()]

    def _starting_ids(self, settings: Ph2pInverter) -> torch.Tensor:
        """Random vocabulary tokens, or the initial prompt's own tokens followed by random ones."""
        start_ids = []
        if settings.initial_prompt:
            encoded = self.parts.tokenizer(settings.initial_prompt, add_special_tokens=False).input_ids
            banned = set(self.projector.banned_ids.tolist())
            start_ids = [token for token in encoded if token not in banned][: self.parts.context_length - 2]
        length = max(settings.prompt_len, len(start_ids))
        ids = self.projector.random_ids(length, self.generator)
        if start_ids:
            ids[: len(start_ids)] = torch.tensor(start_ids, dtype=ids.dtype)
        return ids

    def step(self, index: int = 0) -> dict:
        """One optimisation step at a freshly drawn timestep and noise; its tokens become a candidate.

        Returns plain values: `loss` (the tokens' averaged ranking loss), `prompt`, and details.
        """
        timestep, noisy, target = self._draw_noise()
        before = self.soft.detach().clone()
        try:
            if self.settings.projection == "delayed":
                details = self._delayed_step(timestep, noisy, target)
            else:
                details = self._first_order_step(timestep, noisy, target)
            self.guard.applied()
        except NonFiniteGradient:
            with torch.no_grad():
                self.soft.copy_(before)  # nothing of the step is kept; the tokens stay as they were
            details = self.guard.skip(index)
        prompt = decode_tokens(self.parts.tokenizer, self.ids)
        ranking_loss = self.ranking.loss(self.ids)
        if prompt and ranking_loss < self.candidates.get(prompt, math.inf):
            self.candidates[prompt] = ranking_loss
        loss = ranking_loss if math.isfinite(ranking_loss) else None  # random half-precision weights overflow
        return {"loss": loss, "prompt": prompt, "timestep": int(timestep), **details}

    def shortlist(self, count: int) -> list[tuple[str, float]]:
        """The `count` candidates with the lowest averaged loss, lowest first (ties: first found first)."""
        ordered = sorted(self.candidates.items(), key=lambda item: item[1])
        return ordered[: max(1, count)]

    # ---- the two update rules --------------------------------------------------------------------

    def _delayed_step(self, timestep, noisy, target) -> dict:
        """L-BFGS in continuous space from the current tokens, then snap to the nearest tokens."""
        start_ids = self.ids
        optimizer = torch.optim.LBFGS(
            [self.soft], lr=self.settings.lr, max_iter=self.settings.lbfgs_iterations, line_search_fn="strong_wolfe"
        )

        def closure() -> torch.Tensor:
            optimizer.zero_grad(set_to_none=True)
            loss = self._loss(self.soft, start_ids, timestep, noisy, target)
            if not self.guard.backward(loss, [self.soft]):
                raise NonFiniteGradient
            return loss.detach()

        start_vectors = self.soft.detach().clone()
        loss_before = float(optimizer.step(closure))
        with torch.no_grad():
            loss_after = float(self._loss(self.soft, start_ids, timestep, noisy, target))
            moved = float((self.soft - start_vectors).norm())
            ids, hard = self.projector.project(self.soft)
            self.soft.copy_(hard.float())  # the delayed projection: back onto real tokens
            projected_loss = float(self._loss(self.soft, ids, timestep, noisy, target))
        self.ids = ids
        return {
            "optimised_loss_before": loss_before,
            "optimised_loss_after": loss_after,
            "projected_loss": projected_loss,
            "moved": moved,
            "tokens_changed": int((ids != start_ids).sum()),
        }

    def _first_order_step(self, timestep, noisy, target) -> dict:
        """The baseline: gradient at the projected tokens, applied to the continuous vectors."""
        start_ids, hard = self.projector.project(self.soft)
        hard = hard.float().requires_grad_(True)
        loss = self._loss(hard, start_ids, timestep, noisy, target)
        gradient = self.guard.gradient(loss, hard)
        if gradient is None:
            raise NonFiniteGradient
        self.first_order.zero_grad(set_to_none=True)
        self.soft.grad = gradient
        self.first_order.step()
        with torch.no_grad():
            ids, hard_after = self.projector.project(self.soft)
            projected_loss = float(self._loss(hard_after.float(), ids, timestep, noisy, target))
        self.ids = ids
        return {
            "optimised_loss_before": float(loss.detach()),
            "projected_loss": projected_loss,
            "tokens_changed": int((ids != start_ids).sum()),
        }

    # ---- the objective ---------------------------------------------------------------------------

    def _draw_noise(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        low, high = self.timestep_range
        timestep = torch.randint(low, high, (1,), generator=self.generator)
        noise = torch.randn(self.latents.shape, generator=self.generator)
        return self.noised(timestep, noise)

    def noised(self, timesteps: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(timesteps, the reference latents noised to them, the UNet's training target), on the device."""
        device = self.latents.device
        timesteps, noise = timesteps.to(device), noise.to(device)
        latents = self.latents.expand(noise.shape[0], *self.latents.shape[1:])
        return timesteps, self.parts.add_noise(latents, noise, timesteps), self.parts.noise_target(latents, noise, timesteps)

    def _loss(self, vectors: torch.Tensor, ids: torch.Tensor, timesteps, noisy, target) -> torch.Tensor:
        """Denoising loss (float32) with the slots' vectors substituted into the prompt [start, slots, end]."""
        parts = self.parts
        token_ids = slot_token_ids(ids, **self.markers)
        with substituted_slots(parts.token_embedding, vectors):
            conditioning = parts.encode_ids(token_ids)
        return self.denoising_loss(conditioning, timesteps, noisy, target)

    def denoising_loss(self, conditioning: torch.Tensor, timesteps, noisy, target) -> torch.Tensor:
        parts = self.parts
        conditioning = conditioning.expand(noisy.shape[0], *conditioning.shape[1:]).to(parts.dtype)
        prediction = parts.unet(noisy.to(parts.dtype), timesteps, encoder_hidden_states=conditioning).sample
        return torch.nn.functional.mse_loss(prediction.float(), target.float())


class RankingSet:
    """Fixed timesteps (evenly spread over the search's range) and noises, drawn once per run, at which
    every candidate's denoising loss is averaged: the order of the shortlist depends on the prompts only."""

    def __init__(self, search: Ph2pSearch, count: int, seed: int):
        self.search = search
        low, high = search.timestep_range
        self.timesteps = torch.linspace(low, high - 1, count).round().long()
        generator = torch.Generator().manual_seed(seed)
        self.noise = torch.randn((count, *search.latents.shape[1:]), generator=generator)
        self._cache: dict[tuple[int, ...], float] = {}

    @torch.no_grad()
    def loss(self, token_ids: torch.Tensor) -> float:
        """Mean denoising loss of the prompt [start, tokens, end] over the fixed timesteps and noises."""
        key = tuple(int(token) for token in token_ids.tolist())
        if key not in self._cache:
            search = self.search
            conditioning = search.parts.encode_ids(slot_token_ids(token_ids, **search.markers))
            timesteps, noisy, target = search.noised(self.timesteps, self.noise)
            # One batch: the mean over equal-sized samples is the mean of the per-timestep losses.
            self._cache[key] = float(search.denoising_loss(conditioning, timesteps, noisy, target))
        return self._cache[key]
