"""The pieces of a Stable-Diffusion-style pipeline that PH2P and EDITOR differentiate through.

Both methods need one CLIP text encoder feeding a UNet (SD 1.x / 2.x). SDXL conditions its UNet on
two text encoders plus pooled embeddings and size ids, and PixArt on a T5 encoder; neither fits these
methods' single-encoder formulation, so they are refused with a clear message rather than run wrongly.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from arpo.errors import InvalidInputError

if TYPE_CHECKING:
    from PIL import Image

    from arpo.tools.text_to_image import TextToImage


class DiffusionParts:
    """Text encoder, tokenizer, UNet, VAE and scheduler of one single-text-encoder pipeline."""

    def __init__(self, text_to_image: TextToImage, method: str):
        pipeline = text_to_image.pipeline
        if getattr(pipeline, "text_encoder_2", None) is not None:
            raise InvalidInputError(
                f"{method} supports pipelines with one CLIP text encoder (SD 1.x/2.x); "
                f"{text_to_image.name} has two (SDXL): use --method pez or another --models"
            )
        missing = [part for part in ("text_encoder", "unet", "vae", "tokenizer") if getattr(pipeline, part, None) is None]
        if missing:
            raise InvalidInputError(
                f"{method} needs a UNet pipeline with a CLIP text encoder; {text_to_image.name} "
                f"({type(pipeline).__name__}) lacks {', '.join(missing)}"
            )
        self.text_to_image = text_to_image
        self.pipeline = pipeline
        self.text_encoder = pipeline.text_encoder
        # Our own copy: a fast tokenizer shared with a generating thread fails with "Already borrowed".
        self.tokenizer = copy.deepcopy(pipeline.tokenizer)
        self.unet = pipeline.unet
        self.vae = pipeline.vae
        self.scheduler = pipeline.scheduler
        self.device = self.unet.device
        self.dtype = self.unet.dtype
        self.context_length = int(self.tokenizer.model_max_length)
        for module in (self.text_encoder, self.unet, self.vae):
            module.requires_grad_(False)

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

    def noise_target(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """What the UNet is trained to predict at these timesteps (noise, or velocity for v-models)."""
        prediction = getattr(self.scheduler.config, "prediction_type", "epsilon")
        if prediction == "v_prediction":
            return self.scheduler.get_velocity(latents, noise, timesteps)
        if prediction != "epsilon":
            raise InvalidInputError(f"unsupported UNet prediction type '{prediction}'")
        return noise

    def train_timesteps(self) -> int:
        return int(self.scheduler.config.num_train_timesteps)
