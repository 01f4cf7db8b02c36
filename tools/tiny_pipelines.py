"""Tiny random text-to-image pipelines shaped like the three real families arpo supports.

Each family is built from the same classes as its real counterpart, with the same scheduler class and
noise schedule, so tests exercise the code paths users run:

- "sd15":   StableDiffusionPipeline, one CLIP text encoder (77 positions), PNDMScheduler.
- "sdxl":   StableDiffusionXLPipeline, CLIPTextModel + CLIPTextModelWithProjection (their penultimate
            hidden states concatenated, pooled projection and micro-conditioning time ids added to the
            UNet), EulerDiscreteScheduler.
- "pixart": PixArtAlphaPipeline, a PixArtTransformer2DModel conditioned by a T5EncoderModel that reads
            a 120-token window through a T5 tokenizer trained offline, DPMSolverMultistepScheduler.

Widths and depths are tiny (64x64 images in milliseconds on a CPU); vocabularies and token windows are
the real ones, so token counts and truncation behave exactly as at full size. Part shapes follow
diffusers' own pipeline tests; scheduler settings are those of the real checkpoints' scheduler configs.
"""

from __future__ import annotations

import copy

import torch
from diffusers import (
    AutoencoderKL,
    DiffusionPipeline,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    PixArtAlphaPipeline,
    PixArtTransformer2DModel,
    PNDMScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, T5Config, T5EncoderModel

from arpo.core.errors import InvalidInputError
from arpo.tools.clip_tokenizer import offline_clip_tokenizer

FAMILIES = ("sd15", "sdxl", "pixart")
_TEXT_WIDTH = 32
# Latents are 32x32 and the two-block VAE halves resolution once, so every tiny family draws 64x64.
_LATENT_SIDE = 32


def tiny_pipeline(family: str = "sd15", seed: int = 0) -> DiffusionPipeline:
    """A tiny random pipeline of one family, on the CPU; the same seed always builds the same weights."""
    builders = {"sd15": _tiny_sd15, "sdxl": _tiny_sdxl, "pixart": _tiny_pixart}
    if family not in builders:
        raise InvalidInputError(f"unknown tiny family '{family}'; choose one of: {', '.join(FAMILIES)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        pipeline = builders[family]()
    return pipeline.to("cpu")


# ---- the three families --------------------------------------------------------------------------------


def _tiny_sd15() -> StableDiffusionPipeline:
    return StableDiffusionPipeline(
        vae=_tiny_vae(),
        text_encoder=CLIPTextModel(_clip_text_config()).eval(),
        tokenizer=offline_clip_tokenizer(),
        unet=_tiny_unet(cross_attention_dim=_TEXT_WIDTH),
        scheduler=PNDMScheduler(**_SD_SCHEDULE, skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1),
        safety_checker=None,
        feature_extractor=None,
        image_encoder=None,
        requires_safety_checker=False,
    )


def _tiny_sdxl() -> StableDiffusionXLPipeline:
    # SDXL's UNet cross-attends to both encoders' hidden states side by side and adds an embedding of
    # the second encoder's pooled projection plus six micro-conditioning numbers (original size, crop
    # corner, target size), each embedded with `addition_time_embed_dim` sinusoids.
    time_embed_dim = 8
    unet = _tiny_unet(
        cross_attention_dim=2 * _TEXT_WIDTH,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_embed_dim,
        projection_class_embeddings_input_dim=6 * time_embed_dim + _TEXT_WIDTH,
        use_linear_projection=True,
    )
    return StableDiffusionXLPipeline(
        vae=_tiny_vae(),
        text_encoder=CLIPTextModel(_clip_text_config()).eval(),
        text_encoder_2=CLIPTextModelWithProjection(_clip_text_config()).eval(),
        tokenizer=offline_clip_tokenizer(),
        tokenizer_2=_sdxl_second_tokenizer(),
        unet=unet,
        scheduler=EulerDiscreteScheduler(
            **_SD_SCHEDULE, steps_offset=1, timestep_spacing="leading", interpolation_type="linear"
        ),
        add_watermarker=False,
    )


def _tiny_pixart() -> PixArtAlphaPipeline:
    from arpo.tools.t5_tokenizer import offline_t5_tokenizer

    tokenizer = offline_t5_tokenizer()
    heads, head_width = 2, 8
    transformer = PixArtTransformer2DModel(
        sample_size=_LATENT_SIDE,
        num_layers=2,
        patch_size=2,
        attention_head_dim=head_width,
        num_attention_heads=heads,
        caption_channels=_TEXT_WIDTH,
        in_channels=4,
        cross_attention_dim=heads * head_width,
        out_channels=8,  # PixArt-α learns its variance: noise and variance channels, like the real one
        attention_bias=True,
        activation_fn="gelu-approximate",
        num_embeds_ada_norm=1000,
        norm_type="ada_norm_single",
        norm_elementwise_affine=False,
        norm_eps=1e-6,
        use_additional_conditions=False,  # as PixArt-α 512 (only the 1024 model adds size conditions)
    )
    text_encoder = T5EncoderModel(
        T5Config(
            vocab_size=len(tokenizer),
            d_model=_TEXT_WIDTH,
            d_kv=8,
            d_ff=37,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            decoder_start_token_id=tokenizer.pad_token_id,
        )
    ).eval()
    scheduler = DPMSolverMultistepScheduler(
        num_train_timesteps=1000,
        beta_start=0.0001,
        beta_end=0.02,
        beta_schedule="linear",
        algorithm_type="dpmsolver++",
        solver_order=2,
        solver_type="midpoint",
        lower_order_final=True,
        timestep_spacing="linspace",
        steps_offset=0,
    )
    return PixArtAlphaPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=_tiny_vae(), transformer=transformer, scheduler=scheduler
    )


# ---- shared parts ----------------------------------------------------------------------------------------

# The noise schedule of Stable Diffusion 1.x and SDXL checkpoints.
_SD_SCHEDULE = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}


def _tiny_unet(cross_attention_dim: int, **extra) -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=_LATENT_SIDE,
        in_channels=4,
        out_channels=4,
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=2,
        **extra,
    )


def _tiny_vae() -> AutoencoderKL:
    # Two blocks give a scale factor of 2, so 32x32 latents decode to 64x64 images.
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=4,
        sample_size=2 * _LATENT_SIDE,
    )


def _clip_text_config() -> CLIPTextConfig:
    # Real CLIP vocabulary and context so the offline tokenizer's ids and 77-token padding fit as-is.
    return CLIPTextConfig(
        vocab_size=49408,
        max_position_embeddings=77,
        hidden_size=_TEXT_WIDTH,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        projection_dim=_TEXT_WIDTH,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
    )


def _sdxl_second_tokenizer():
    """SDXL's second tokenizer: the same CLIP BPE, but it pads with "!" (id 0) as OpenCLIP's bigG did."""
    tokenizer = copy.deepcopy(offline_clip_tokenizer())
    tokenizer.pad_token = "!"
    return tokenizer


def cast_like_loading(pipeline: DiffusionPipeline, dtype: torch.dtype) -> None:
    """Cast every model of `pipeline` to `dtype` the way loading real weights in that dtype does.

    `from_pretrained(dtype=float16)` keeps the modules a class lists in `_keep_in_fp32_modules` in
    float32 (T5's feed-forward output projection `wo`, which overflows in float16), and also those in
    `_keep_in_fp32_modules_strict` for bfloat16; a plain `.to(dtype)` would not, so tiny models would
    run a precision the real ones never do.
    """
    for component in pipeline.components.values():
        if not isinstance(component, torch.nn.Module):
            continue
        # torch's own cast: diffusers' ModelMixin.to warns about float32 modules even when it has none.
        torch.nn.Module.to(component, dtype=dtype)
        kept = set(getattr(component, "_keep_in_fp32_modules_strict", None) or []) if dtype in (torch.float16, torch.bfloat16) else set()
        if dtype == torch.float16:
            kept |= set(getattr(component, "_keep_in_fp32_modules", None) or [])
        for name, module in component.named_modules():
            if kept and any(part in kept for part in name.split(".")):
                torch.nn.Module.to(module, dtype=torch.float32)
