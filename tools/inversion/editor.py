"""EDITOR (Effective and Interpretable prompt inversion): caption, refine the encoder output, back to text.

1. Initialise: caption the reference and encode the caption with the pipeline's text encoder; the
   optimised variable is the encoder's output (77 x width), not token embeddings.
2. Reverse-engineer: from a fixed noise (the run's seed), run a short denoising loop (default 5 DDIM
   steps, with the generator's guidance) conditioned on that embedding, and minimise the distance of
   the result to the reference with Adam. `reconstruction="latent"` compares VAE latents (cheap; the
   default), `"pixel"` decodes and compares images as the paper's loss does.
3. Embedding-to-text: a backend (`TrainingFreeInverter` by default, or a trained vec2text-style
   `TrainedInverter`) turns the best embedding back into a prompt.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import torch

from arpo.tools.inversion.base import InversionBudget, InversionResult, OnStep
from arpo.tools.inversion.diffusion_parts import DiffusionParts
from arpo.tools.inversion.embedding_to_text import EmbeddingToText, embedding_distance
from arpo.tools.inversion.trajectory import TrajectoryTracker

if TYPE_CHECKING:
    from PIL import Image

    from arpo.tools.model_stack import ModelStack

DEFAULT_STEPS = 1000  # the paper's default number of optimisation iterations
DEFAULT_DENOISING_STEPS = 5
DEFAULT_LR = 1e-2


@dataclass
class EditorInverter:
    """EDITOR against the stack's pipeline and captioner; `budget` applies when `invert` is given none."""

    denoising_steps: int = DEFAULT_DENOISING_STEPS
    lr: float = DEFAULT_LR
    reconstruction: Literal["latent", "pixel"] = "latent"
    text_recovery: EmbeddingToText | None = None
    """Embedding-to-text backend; None: the trained inverter in `trained_inverter_folder`, if given,
    else the training-free search."""
    trained_inverter_folder: str | None = None
    """A trained inverter's folder (`arpo.tools.inversion.inverter_training`); loaded on first use
    with the pipeline's tokenizer, which it decodes with."""
    initial_prompt: str | None = None
    """Start from this prompt instead of the captioner's."""
    budget: InversionBudget = field(default_factory=InversionBudget)
    name: str = "editor"

    def invert(
        self,
        reference: Image.Image,
        models: ModelStack,
        *,
        seed: int = 0,
        budget: InversionBudget | None = None,
        on_step: OnStep | None = None,
    ) -> InversionResult:
        parts = DiffusionParts(models.text_to_image, "EDITOR")
        text_recovery = self._text_recovery(parts)  # a missing trained inverter fails before any work
        tracker = TrajectoryTracker(budget or self.budget, DEFAULT_STEPS, on_step)
        caption = (self.initial_prompt or models.captioner.caption(reference)).strip()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            reconstruction = Reconstruction(parts, reference, seed, self.denoising_steps, self.reconstruction)
            start = parts.encode_prompts([caption])
            best, initial_loss, best_loss = self._optimise(reconstruction, start, tracker)
            stopped_because = tracker.stop_reason()
            recovery = text_recovery.recover(
                best[0],
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
                "initial_reconstruction_loss": initial_loss,
                "best_reconstruction_loss": best_loss,
                "caption_distance": float(embedding_distance(best[0], start)[0]),
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
        parts = DiffusionParts(models.text_to_image, "EDITOR")
        tracker = TrajectoryTracker(InversionBudget(max_steps=steps), steps)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            reconstruction = Reconstruction(parts, reference, seed, self.denoising_steps, self.reconstruction)
            best, _, _ = self._optimise(reconstruction, parts.encode_prompts([start_prompt]), tracker)
        return best, [step.loss for step in tracker.steps]

    def _optimise(
        self, reconstruction: Reconstruction, start: torch.Tensor, tracker: TrajectoryTracker
    ) -> tuple[torch.Tensor, float, float]:
        embedding = start.clone().requires_grad_(True)
        optimizer = torch.optim.Adam([embedding], lr=self.lr)
        best, best_loss, initial_loss = start.clone(), float("inf"), None
        while tracker.may_continue():
            optimizer.zero_grad(set_to_none=True)
            loss = reconstruction.loss(embedding)
            loss.backward()
            value = float(loss.detach())
            initial_loss = value if initial_loss is None else initial_loss
            if value < best_loss:  # the loss belongs to the embedding before this update
                best, best_loss = embedding.detach().clone(), value
            optimizer.step()
            tracker.record(value, None, phase="reconstruction")
        if initial_loss is None:  # no step allowed: the caption's embedding is the result
            initial_loss = best_loss = float(reconstruction.loss(start).detach())
        return best, initial_loss, best_loss

    def _text_recovery(self, parts: DiffusionParts) -> EmbeddingToText:
        if self.text_recovery is None and self.trained_inverter_folder:
            from arpo.tools.inversion.trained_inverter import TrainedInverter

            self.text_recovery = TrainedInverter.load(self.trained_inverter_folder, parts.tokenizer, parts.device)
        if self.text_recovery is None:
            from arpo.tools.inversion.training_free_inverter import TrainingFreeInverter

            self.text_recovery = TrainingFreeInverter()
        return self.text_recovery


class Reconstruction:
    """Few-step generation from a fixed noise, differentiable in the conditioning, and its loss."""

    def __init__(self, parts: DiffusionParts, reference: Image.Image, seed: int, steps: int, space: str):
        self.parts = parts
        self.space = space
        t2i = parts.text_to_image
        self.guidance = t2i.guidance_scale
        self.scheduler = copy.deepcopy(parts.scheduler)  # its step counter must not disturb generation
        self.scheduler.set_timesteps(steps, device=parts.device)
        self.reference_latents = parts.reference_latents(reference)
        # The same starting noise the pipeline draws for this seed (CPU generator, then moved).
        generator = torch.Generator(device="cpu").manual_seed(int(seed))
        noise = torch.randn(self.reference_latents.shape, generator=generator)
        self.start = (noise * self.scheduler.init_noise_sigma).to(parts.device)
        self.unconditional = parts.encode_prompts([""])
        if space == "pixel":
            self.reference_pixels = parts.reference_pixels(reference).to(parts.device).float()

    def generate_latents(self, embedding: torch.Tensor) -> torch.Tensor:
        parts, latents = self.parts, self.start
        guided = self.guidance > 1.0
        conditioning = torch.cat([self.unconditional, embedding]) if guided else embedding
        for timestep in self.scheduler.timesteps:
            model_input = torch.cat([latents] * 2) if guided else latents
            model_input = self.scheduler.scale_model_input(model_input, timestep)
            noise = parts.unet(
                model_input.to(parts.dtype), timestep, encoder_hidden_states=conditioning.to(parts.dtype)
            ).sample.float()
            if guided:
                unconditional, conditional = noise.chunk(2)
                noise = unconditional + self.guidance * (conditional - unconditional)
            latents = self.scheduler.step(noise, timestep, latents).prev_sample
        return latents

    def loss(self, embedding: torch.Tensor) -> torch.Tensor:
        latents = self.generate_latents(embedding)
        if self.space == "latent":
            return torch.nn.functional.mse_loss(latents, self.reference_latents)
        vae = self.parts.vae
        pixels = vae.decode((latents / vae.config.scaling_factor).to(vae.dtype)).sample.float()
        return torch.nn.functional.mse_loss(pixels, self.reference_pixels)
