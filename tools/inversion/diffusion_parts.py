"""The pieces of a Stable-Diffusion-style pipeline that PH2P and EDITOR differentiate through.

Both methods need one CLIP text encoder feeding a UNet (SD 1.x / 2.x). SDXL conditions its UNet on
two text encoders plus pooled embeddings and size ids, and PixArt a transformer on a T5 encoder;
neither fits these methods' single-CLIP-encoder formulation (PH2P projects onto one CLIP vocabulary,
EDITOR optimises one encoder's output), so they are refused with a one-line message naming the method
and the family rather than run wrongly.

Schedulers keep state between steps (PNDM's history, DPM-Solver's previous outputs, Euler's step
index), so nothing here steps the pipeline's own scheduler: each generation gets `fresh_scheduler()`,
and the training-time noising (`add_noise`, `noise_target`) goes through a DDPM scheduler built from
the same configuration, which is what the UNet was trained against and has no stepping state at all.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch

from arpo.errors import InvalidInputError
from arpo.tools.schedulers import fresh_scheduler

if TYPE_CHECKING:
    from diffusers.schedulers.scheduling_utils import SchedulerMixin
    from PIL import Image

    from arpo.tools.text_to_image import TextToImage


def refuse_unsupported_family(text_to_image: TextToImage, method: str) -> None:
    """A one-line InvalidInputError when `method` cannot run on this pipeline's model family."""
    pipeline = text_to_image.pipeline
    if getattr(pipeline, "text_encoder_2", None) is not None:
        raise InvalidInputError(
            f"{method} does not support SDXL-family pipelines: {text_to_image.name} conditions its UNet on two "
            "text encoders plus pooled embeddings, and the method optimises one CLIP encoder's input or output; "
            "use --method pez, or an SD 1.x/2.x model"
        )
    if getattr(pipeline, "transformer", None) is not None and getattr(pipeline, "unet", None) is None:
        raise InvalidInputError(
            f"{method} does not support PixArt-family pipelines: {text_to_image.name} conditions a transformer "
            "on a T5 encoder, and the method is defined on one CLIP text encoder (and its vocabulary) feeding a "
            "UNet; use --method pez, or an SD 1.x/2.x model"
        )
    missing = [part for part in ("text_encoder", "unet", "vae", "tokenizer") if getattr(pipeline, part, None) is None]
    if missing:
        raise InvalidInputError(
            f"{method} needs a UNet pipeline with a CLIP text encoder; {text_to_image.name} "
            f"({type(pipeline).__name__}) lacks {', '.join(missing)}"
        )


class DiffusionParts:
    """Text encoder, tokenizer, UNet and VAE of one single-text-encoder pipeline, and its schedules."""

    def __init__(self, text_to_image: TextToImage, method: str):
        refuse_unsupported_family(text_to_image, method)
        pipeline = text_to_image.pipeline
        self.text_to_image = text_to_image
        self.pipeline = pipeline
        self.text_encoder = pipeline.text_encoder
        # Our own copy: a fast tokenizer shared with a generating thread fails with "Already borrowed".
        self.tokenizer = copy.deepcopy(pipeline.tokenizer)
        self.unet = pipeline.unet
        self.vae = pipeline.vae
        self.noise_schedule = _training_noise_schedule(pipeline.scheduler)
        self.device = self.unet.device
        self.dtype = self.unet.dtype
        """The frozen models' dtype; optimised variables and losses stay float32 whatever it is."""
        self.context_length = int(self.tokenizer.model_max_length)
        for module in (self.text_encoder, self.unet, self.vae):
            module.requires_grad_(False)

    def fresh_scheduler(self) -> SchedulerMixin:
        """A new sampling scheduler of the pipeline's class and configuration, for one generation."""
        return fresh_scheduler(self.pipeline)

    @contextmanager
    def gradient_checkpointing(self) -> Iterator[bool]:
        """While active the UNet recomputes activations in the backward pass instead of keeping them
        (where it supports that); yields whether it does. The previous setting comes back afterwards."""
        unet = self.unet
        supported = bool(getattr(unet, "_supports_gradient_checkpointing", False))
        was_on = bool(getattr(unet, "is_gradient_checkpointing", False))
        if supported and not was_on:
            unet.enable_gradient_checkpointing()
        try:
            yield supported
        finally:
            if supported and not was_on:
                unet.disable_gradient_checkpointing()

    @property
    def token_embedding(self) -> torch.nn.Embedding:
        return self.text_encoder.get_input_embeddings()

    @property
    def markers(self) -> tuple[int, int, int]:
        """(start, end, padding) token ids."""
        tokenizer = self.tokenizer
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        return int(tokenizer.bos_token_id), int(tokenizer.eos_token_id), int(pad)

    def token_ids(self, prompts: Sequence[str]) -> torch.Tensor:
        """Padded, truncated ids of `prompts` as the pipeline tokenizes them."""
        batch = self.tokenizer(
            list(prompts), padding="max_length", truncation=True, max_length=self.context_length, return_tensors="pt"
        )
        return batch.input_ids.to(self.device)

    def encode_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """The conditioning the UNet reads: the text encoder's last hidden state (batch, 77, width)."""
        return self.text_encoder(ids)[0]

    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        """Conditioning of many prompts, float32 on the pipeline's device."""
        chunks = [
            self.encode_ids(self.token_ids(prompts[start : start + batch_size])).float()
            for start in range(0, len(prompts), batch_size)
        ]
        return torch.cat(chunks) if chunks else torch.empty(0)

    def reference_pixels(self, reference: Image.Image) -> torch.Tensor:
        """The reference image at the generator's size, as the VAE reads pixels (-1..1, on CPU)."""
        t2i = self.text_to_image
        return self.pipeline.image_processor.preprocess(reference.convert("RGB"), height=t2i.height, width=t2i.width)

    @torch.no_grad()
    def reference_latents(self, reference: Image.Image) -> torch.Tensor:
        """The reference image at the generator's size, VAE-encoded (posterior mean, scaled)."""
        pixels = self.reference_pixels(reference)
        posterior = self.vae.encode(pixels.to(self.device, self.vae.dtype)).latent_dist
        return (posterior.mean * self.vae.config.scaling_factor).float()

    def add_noise(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """Clean latents noised to these training timesteps, as in the UNet's training."""
        return self.noise_schedule.add_noise(latents, noise, timesteps)

    def noise_target(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """What the UNet is trained to predict at these timesteps (noise, or velocity for v-models)."""
        prediction = getattr(self.noise_schedule.config, "prediction_type", "epsilon")
        if prediction == "v_prediction":
            return self.noise_schedule.get_velocity(latents, noise, timesteps)
        if prediction != "epsilon":
            raise InvalidInputError(f"unsupported UNet prediction type '{prediction}'")
        return noise

    def train_timesteps(self) -> int:
        return int(self.noise_schedule.config.num_train_timesteps)


def _training_noise_schedule(scheduler: SchedulerMixin) -> SchedulerMixin:
    """A DDPM scheduler with the sampler's noise schedule (betas, prediction type): stateless noising."""
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(scheduler.config)
