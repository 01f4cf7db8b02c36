"""The pieces of a Stable-Diffusion-style pipeline that PH2P and EDITOR differentiate through.

Both methods were made for one CLIP text encoder feeding a UNet (SD 1.x / 2.x). EDITOR also runs on
SDXL (`sdxl=True`): its optimised variable is the encoder output the UNet reads, which for SDXL is the
two encoders' penultimate hidden states side by side, plus the second encoder's pooled embedding and
the size ids as added conditions. PH2P does not: it optimises token vectors in one CLIP encoder's input
space and projects them onto that vocabulary, while SDXL reads every token through two differently
embedded encoders. PixArt conditions a transformer on a T5 encoder, outside both methods'
formulation. Whatever is refused is refused with a one-line message naming the method and the family.

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

from arpo.core.errors import InvalidInputError
from arpo.tools.schedulers import fresh_scheduler

if TYPE_CHECKING:
    from diffusers.schedulers.scheduling_utils import SchedulerMixin
    from PIL import Image

    from arpo.tools.text_to_image import TextToImage


def refuse_unsupported_family(text_to_image: TextToImage, method: str, *, sdxl: bool = False) -> None:
    """A one-line InvalidInputError when `method` cannot run on this pipeline's model family."""
    pipeline = text_to_image.pipeline
    if getattr(pipeline, "text_encoder_2", None) is not None and not sdxl:
        raise InvalidInputError(
            f"{method} does not support SDXL-family pipelines: {text_to_image.name} conditions its UNet on two "
            f"text encoders plus pooled embeddings, and {method} works in one CLIP encoder's token-embedding space; "
            "use --method editor or pez, or an SD 1.x/2.x model"
        )
    if getattr(pipeline, "transformer", None) is not None and getattr(pipeline, "unet", None) is None:
        raise InvalidInputError(
            f"{method} does not support PixArt-family pipelines: {text_to_image.name} conditions a transformer "
            "on a T5 encoder, and the method is defined on one CLIP text encoder (and its vocabulary) feeding a "
            "UNet; use --method pez, or an SD 1.x/2.x model"
        )
    needed = ("text_encoder", "unet", "vae", "tokenizer")
    if getattr(pipeline, "text_encoder_2", None) is not None:
        needed += ("tokenizer_2",)
    missing = [part for part in needed if getattr(pipeline, part, None) is None]
    if missing:
        raise InvalidInputError(
            f"{method} needs a UNet pipeline with a CLIP text encoder; {text_to_image.name} "
            f"({type(pipeline).__name__}) lacks {', '.join(missing)}"
        )


class DiffusionParts:
    """Text encoders, tokenizers, UNet and VAE of an SD 1.x/2.x (or, where allowed, SDXL) pipeline,
    and its schedules. `sdxl`: the caller can run on SDXL (EDITOR); otherwise SDXL is refused."""

    def __init__(self, text_to_image: TextToImage, method: str, *, sdxl: bool = False):
        refuse_unsupported_family(text_to_image, method, sdxl=sdxl)
        pipeline = text_to_image.pipeline
        self.text_to_image = text_to_image
        self.pipeline = pipeline
        self.text_encoder = pipeline.text_encoder
        # Our own copy: a fast tokenizer shared with a generating thread fails with "Already borrowed".
        self.tokenizer = copy.deepcopy(pipeline.tokenizer)
        self.text_encoder_2 = getattr(pipeline, "text_encoder_2", None)
        self.tokenizer_2 = copy.deepcopy(pipeline.tokenizer_2) if self.text_encoder_2 is not None else None
        self.unet = pipeline.unet
        self.vae = pipeline.vae
        self.noise_schedule = _training_noise_schedule(pipeline.scheduler)
        self.device = self.unet.device
        self.dtype = self.unet.dtype
        """The frozen models' dtype; optimised variables and losses stay float32 whatever it is."""
        self.context_length = int(self.tokenizer.model_max_length)
        for module in (self.text_encoder, self.text_encoder_2, self.unet, self.vae):
            if module is not None:
                module.requires_grad_(False)

    @property
    def is_sdxl(self) -> bool:
        return self.text_encoder_2 is not None

    @property
    def embedding_width(self) -> int:
        """Width of the conditioning `encode_prompts` returns (the two encoders' together on SDXL)."""
        widths = [encoder.config.hidden_size for encoder in (self.text_encoder, self.text_encoder_2) if encoder is not None]
        return int(sum(widths))

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

    def token_ids(self, prompts: Sequence[str], tokenizer=None) -> torch.Tensor:
        """Padded, truncated ids of `prompts` as the pipeline (or its `tokenizer`) tokenizes them."""
        tokenizer = tokenizer or self.tokenizer
        batch = tokenizer(
            list(prompts), padding="max_length", truncation=True, max_length=tokenizer.model_max_length,
            return_tensors="pt",
        )
        return batch.input_ids.to(self.device)

    def encode_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """The conditioning the UNet reads: the text encoder's last hidden state (batch, 77, width)."""
        return self.text_encoder(ids)[0]

    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        """Conditioning of many prompts, float32 on the pipeline's device: the text encoder's last
        hidden state, or on SDXL both encoders' penultimate hidden states concatenated (as SDXL's
        pipeline conditions its UNet)."""
        encode = self._encode_sdxl if self.is_sdxl else (lambda chunk: (self.encode_ids(self.token_ids(chunk)), None))
        chunks = [encode(prompts[start : start + batch_size])[0].float() for start in range(0, len(prompts), batch_size)]
        return torch.cat(chunks) if chunks else torch.empty(0)

    @torch.no_grad()
    def pooled_prompts(self, prompts: Sequence[str]) -> torch.Tensor | None:
        """SDXL's pooled embeddings of `prompts` (float32), None for single-encoder pipelines."""
        return self._encode_sdxl(list(prompts))[1].float() if self.is_sdxl else None

    @torch.no_grad()
    def unconditional(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(conditioning, pooled) of classifier-free guidance's unconditional branch, as the pipeline
        makes it: the empty prompt, or zeros where SDXL's configuration forces them."""
        if self.is_sdxl and getattr(self.pipeline.config, "force_zeros_for_empty_prompt", False):
            embeds, pooled = self._encode_sdxl([""])
            return torch.zeros_like(embeds).float(), torch.zeros_like(pooled).float()
        return self.encode_prompts([""]), self.pooled_prompts([""])

    def unet_conditions(self, pooled: torch.Tensor | None) -> dict:
        """Keyword arguments the UNet needs beyond the text conditioning: SDXL's pooled embeddings and
        size ids (original size, crop corner (0, 0), target size: the generator's own size)."""
        if pooled is None:
            return {}
        height, width = self.text_to_image.height, self.text_to_image.width
        time_ids = torch.tensor([[height, width, 0, 0, height, width]], device=self.device, dtype=self.dtype)
        return {
            "added_cond_kwargs": {
                "text_embeds": pooled.to(self.device, self.dtype),
                "time_ids": time_ids.repeat(pooled.shape[0], 1),
            }
        }

    def _encode_sdxl(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = []
        for tokenizer, encoder in ((self.tokenizer, self.text_encoder), (self.tokenizer_2, self.text_encoder_2)):
            output = encoder(self.token_ids(prompts, tokenizer), output_hidden_states=True)
            hidden.append(output.hidden_states[-2])
        pooled = output[0]  # the second encoder's projected pooled embedding
        return torch.cat(hidden, dim=-1), pooled

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
