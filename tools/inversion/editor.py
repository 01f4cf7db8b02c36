"""EDITOR (Effective and Interpretable prompt inversion): caption, refine the encoder output, back to text.

1. Initialise: caption the reference and encode the caption with the pipeline's text encoder; the
   optimised variable is the encoder's output (77 x width), not token embeddings.
2. Reverse-engineer: from a fixed noise (the run's seed), run a short denoising loop (default 5 steps
   of the pipeline's own sampler, with its guidance) conditioned on that embedding, and minimise the
   distance of the result to the reference with Adam. `reconstruction="latent"` compares VAE latents (cheap; the
   default), `"pixel"` decodes and compares images as the paper's loss does.
3. Embedding-to-text: a backend (`TrainingFreeInverter` by default, or a trained vec2text-style
   `TrainedInverter`) turns the best embedding back into a prompt.

Every generation in step 2 starts from a fresh scheduler (`DiffusionParts.fresh_scheduler`): samplers
such as PNDM and DPM-Solver keep the previous steps' outputs, and reusing one object across
optimisation steps would mix graphs of earlier steps into the next (and crash its backward pass). The
embedding, Adam's state and the loss are float32 whatever the models' dtype; a step whose gradient is
not finite is skipped and marked in the trajectory (`precision.GradientGuard`); the UNet recomputes
activations in the backward pass (gradient checkpointing) where it supports that, because the graph
through several denoising steps at full size is what limits memory.

On SDXL the optimised variable is the UNet's token conditioning (both encoders' hidden states side by
side); the pooled embedding and size ids stay those of the caption, because the embedding-to-text step
can only match the token conditioning, so anything the pooled vector learned would be lost in the text.
PixArt (a T5-conditioned transformer) is refused.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch

from arpo.core.errors import InvalidInputError
from arpo.tools.devices import dtype_name
from arpo.tools.inversion.base import InversionBudget, InversionResult
from arpo.tools.inversion.diffusion_parts import DiffusionParts
from arpo.tools.inversion.embedding_to_text import EmbeddingToText, embedding_distance
from arpo.tools.inversion.precision import GradientGuard
from arpo.tools.inversion.trajectory import PipelineInverter, StartTracking, TrajectoryTracker

if TYPE_CHECKING:
    from PIL import Image

    from arpo.tools.model_stack import ModelStack

DEFAULT_STEPS = 1000  # the paper's default number of optimisation iterations
DEFAULT_DENOISING_STEPS = 5
DEFAULT_LR = 1e-2


@dataclass
class EditorInverter(PipelineInverter):
    """EDITOR against the stack's pipeline and captioner."""

    denoising_steps: int = DEFAULT_DENOISING_STEPS
    lr: float = DEFAULT_LR
    reconstruction: Literal["latent", "pixel"] = "latent"
    text_recovery: EmbeddingToText | None = None
    """Embedding-to-text backend; None: the trained inverter in `trained_inverter_folder`, if given,
    else the training-free search."""
    trained_inverter_folder: str | None = None
    """A trained inverter's folder (`arpo.training.inverter`); loaded on first use
    with the pipeline's tokenizer, which it decodes with."""
    initial_prompt: str | None = None
    """Start from this prompt instead of the captioner's."""
    name: str = "editor"
    default_steps = DEFAULT_STEPS

    def _invert(
        self, reference: Image.Image, models: ModelStack, seed: int, start_tracking: StartTracking
    ) -> InversionResult:
        parts = DiffusionParts(models.text_to_image, "EDITOR", sdxl=True)
        text_recovery = self._text_recovery(parts)  # a missing trained inverter fails before any work
        tracker = start_tracking()
        caption = (self.initial_prompt or models.captioner.caption(reference)).strip()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            reconstruction = Reconstruction(parts, reference, seed, self.denoising_steps, self.reconstruction, caption)
            start = parts.encode_prompts([caption])
            optimised = self._optimise(reconstruction, start, tracker)
            stopped_because = tracker.stop_reason()
            recovery = text_recovery.recover(
                optimised.best[0],
                parts,
                start_prompts=[caption],
                seed=seed,
                max_seconds=tracker.seconds_left(),
                on_round=lambda summary: tracker.record(
                    summary["distance"], summary["prompt"], phase="embedding-to-text", round=summary["round"]
                ),
            )
        optimised_steps = tracker.taken - len(recovery.rounds)
        return InversionResult(
            method=self.name,
            prompt=recovery.prompt,
            score=-recovery.distance,
            steps=tracker.steps,
            seconds=tracker.seconds,
            details={
                "caption": caption,
                "optimisation_steps": optimised_steps,
                "initial_reconstruction_loss": optimised.initial_loss,
                "best_reconstruction_loss": optimised.best_loss,
                "skipped_steps": optimised.skipped,
                "gradient_checkpointing": optimised.checkpointed,
                "model_dtype": dtype_name(parts.dtype),
                "caption_distance": float(embedding_distance(optimised.best[0], start)[0]),
                "embedding_distance": recovery.distance,
                "text_recovery": getattr(text_recovery, "name", "custom"),
                "denoising_steps": self.denoising_steps,
                "reconstruction": self.reconstruction,
                "lr": self.lr,
                "stopped_because": stopped_because,
            },
        )

    def optimise_embedding(
        self, reference: Image.Image, models: ModelStack, start_prompt: str, *, seed: int = 0, steps: int = 10
    ) -> tuple[torch.Tensor, list[float]]:
        """Only step 2: the optimised embedding and the loss per step (step 0 is the start's loss)."""
        tracker = TrajectoryTracker(InversionBudget(max_steps=steps), steps)
        with self._held_models(models), torch.random.fork_rng(devices=[]):
            parts = DiffusionParts(models.text_to_image, "EDITOR", sdxl=True)  # on the device the turn holds
            torch.manual_seed(seed)
            reconstruction = Reconstruction(
                parts, reference, seed, self.denoising_steps, self.reconstruction, start_prompt
            )
            optimised = self._optimise(reconstruction, parts.encode_prompts([start_prompt]), tracker)
        return optimised.best, [step.loss for step in tracker.steps]

    def _optimise(self, reconstruction: Reconstruction, start: torch.Tensor, tracker: TrajectoryTracker) -> _Optimised:
        parts = reconstruction.parts
        guard = GradientGuard(parts.dtype, "EDITOR")
        embedding = start.detach().float().clone().requires_grad_(True)  # the float32 master copy
        optimizer = torch.optim.Adam([embedding], lr=self.lr)
        result = _Optimised(best=embedding.detach().clone())
        with parts.gradient_checkpointing() as checkpointed:
            result.checkpointed = checkpointed
            while tracker.may_continue():
                optimizer.zero_grad(set_to_none=True)
                loss = reconstruction.loss(embedding)
                finite = guard.backward(loss, [embedding])
                value = float(loss.detach())
                details: dict = {"phase": "reconstruction"}
                if math.isfinite(value):
                    result.initial_loss = value if result.initial_loss is None else result.initial_loss
                    if value < result.best_loss:  # the loss belongs to the embedding before this update
                        result.best, result.best_loss = embedding.detach().clone(), value
                if finite:
                    optimizer.step()
                    guard.applied()
                else:
                    details.update(guard.skip(tracker.taken))
                tracker.record(value if math.isfinite(value) else None, None, **details)
        result.skipped = guard.skipped
        if result.initial_loss is None:  # no usable step: the caption's embedding is the result
            with torch.no_grad():
                result.initial_loss = result.best_loss = float(reconstruction.loss(start.float()))
        return result

    def _text_recovery(self, parts: DiffusionParts) -> EmbeddingToText:
        if self.text_recovery is None and self.trained_inverter_folder:
            from arpo.tools.inversion.trained_inverter import TrainedInverter

            self.text_recovery = TrainedInverter.load(self.trained_inverter_folder, parts.tokenizer, parts.device)
        if self.text_recovery is None:
            from arpo.tools.inversion.training_free_inverter import TrainingFreeInverter

            self.text_recovery = TrainingFreeInverter()
        # Fail before the optimisation, not after it: an inverter trained on another text encoder
        # (SD 1.5's 768 wide, SDXL's 2048) cannot read this pipeline's embeddings.
        config = getattr(self.text_recovery, "config", None)
        width = getattr(config, "embedding_width", None)
        if width is not None and width != parts.embedding_width:
            raise InvalidInputError(
                f"the trained inverter reads {width}-wide embeddings (trained on {config.text_encoder}); "
                f"{parts.text_to_image.name}'s are {parts.embedding_width}-wide"
            )
        return self.text_recovery


@dataclass
class _Optimised:
    """Step 2's outcome: the lowest-loss embedding seen, and how the optimisation went."""

    best: torch.Tensor
    initial_loss: float | None = None
    best_loss: float = float("inf")
    skipped: int = 0
    checkpointed: bool = False


class Reconstruction:
    """Few-step generation from a fixed noise, differentiable in the conditioning, and its loss."""

    def __init__(
        self, parts: DiffusionParts, reference: Image.Image, seed: int, steps: int, space: str, caption: str = ""
    ):
        self.parts = parts
        self.space = space
        self.steps = steps
        self.seed = int(seed)
        self.guidance = parts.text_to_image.guidance_scale
        self.reference_latents = parts.reference_latents(reference)
        # The same starting noise the pipeline draws for this seed (CPU generator, then moved); each
        # generation scales it by its own fresh scheduler's initial sigma.
        generator = torch.Generator(device="cpu").manual_seed(self.seed)
        self.noise = torch.randn(self.reference_latents.shape, generator=generator).to(parts.device)
        self.unconditional, self.unconditional_pooled = parts.unconditional()
        self.pooled = parts.pooled_prompts([caption])  # SDXL only: fixed at the caption's (see above)
        if space == "pixel":
            self.reference_pixels = parts.reference_pixels(reference).to(parts.device).float()

    def generate_latents(self, embedding: torch.Tensor) -> torch.Tensor:
        """A few denoising steps from the fixed noise, conditioned on `embedding` (float32 latents)."""
        parts = self.parts
        scheduler = parts.fresh_scheduler()  # no history from the previous optimisation step
        scheduler.set_timesteps(self.steps, device=parts.device)
        step_options = _step_options(scheduler, self.seed)
        latents = self.noise * scheduler.init_noise_sigma
        guided = self.guidance > 1.0
        conditioning = torch.cat([self.unconditional, embedding.float()]) if guided else embedding.float()
        pooled = self.pooled
        if pooled is not None and guided:
            pooled = torch.cat([self.unconditional_pooled, pooled])
        conditions = parts.unet_conditions(pooled)
        for timestep in scheduler.timesteps:
            model_input = torch.cat([latents] * 2) if guided else latents
            model_input = scheduler.scale_model_input(model_input, timestep)
            noise = parts.unet(
                model_input.to(parts.dtype), timestep, encoder_hidden_states=conditioning.to(parts.dtype), **conditions
            ).sample.float()
            if guided:
                unconditional, conditional = noise.chunk(2)
                noise = unconditional + self.guidance * (conditional - unconditional)
            latents = scheduler.step(noise, timestep, latents, **step_options).prev_sample
        return latents

    def loss(self, embedding: torch.Tensor) -> torch.Tensor:
        latents = self.generate_latents(embedding)
        if self.space == "latent":
            return torch.nn.functional.mse_loss(latents, self.reference_latents)
        vae = self.parts.vae
        pixels = vae.decode((latents / vae.config.scaling_factor).to(vae.dtype)).sample.float()
        return torch.nn.functional.mse_loss(pixels, self.reference_pixels)


def _step_options(scheduler, seed: int) -> dict:
    """A generator for samplers that draw noise while stepping (Euler ancestral, DDIM with eta), seeded
    the same way for every generation, so the loss is a function of the embedding alone."""
    if "generator" not in inspect.signature(scheduler.step).parameters:
        return {}
    return {"generator": torch.Generator(device="cpu").manual_seed(seed)}
