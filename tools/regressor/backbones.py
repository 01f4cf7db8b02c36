"""Image encoders the regressor puts its heads on, chosen by a spec string.

- `tiny`: a three-layer random CNN on 32-pixel images, for tests and offline demos.
- `clip:MODEL/TAG` (e.g. `clip:ViT-H-14/laion2b_s32b_b79k`): an open_clip image tower; `clip:tiny` is
  the tiny random CLIP of `ClipScorer.tiny()`.
- `timm:NAME` (e.g. `timm:vit_base_patch16_224`, `timm:swin_large_patch4_window7_224`): a timm model
  without its classifier; `timm:tiny` is a one-block random ViT.
- `unet[:MODELS]` (MODELS: `sd15` by default, `tiny`, or a diffusers id): the paper's white-box variant,
  the Stable Diffusion U-Net's encoder (down blocks and middle block) run on the VAE latents of the
  image at timestep 0, cross-attending to the text encoding of a caption of that image.

Every backbone splits its work in two: `prepare` (frozen: pixels to tensors; for the U-Net also the
VAE, the captioner and the text encoder) runs once per image and may be cached, `forward` (trained)
turns prepared tensors into one feature vector per image. Pretrained weights load by name through the
fail-fast hub helpers; `pretrained=False` builds the same architecture for a checkpoint to fill in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn

from arpo.core.errors import InvalidInputError

TINY = "tiny"
KINDS = ("tiny", "clip", "timm", "unet")
UNET_DEFAULT_MODELS = "sd15"
# The paper captions with BLIP; the base model is a fraction of BLIP-2's cost per training image.
UNET_CAPTIONER = "Salesforce/blip-image-captioning-base"
_TINY_SIDE = 32
_TINY_CHANNELS = (16, 32, 64)


@dataclass(frozen=True)
class PixelRecipe:
    """How a backbone wants its images: square side, and per-channel mean and std after scaling to 0..1."""

    size: int
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)

    def transform(self):
        from torchvision import transforms

        return transforms.Compose(
            [
                transforms.Resize(self.size, interpolation=transforms.InterpolationMode.BICUBIC),
                transforms.CenterCrop(self.size),
                transforms.ToTensor(),
                transforms.Normalize(self.mean, self.std),
            ]
        )

    def pixels(self, images: Sequence[Image.Image]) -> torch.Tensor:
        transform = self.transform()
        return torch.stack([transform(image.convert("RGB")) for image in images])


@dataclass(frozen=True)
class BackboneSpec:
    """A parsed backbone spec: its kind and the model name after the colon (None when not given)."""

    kind: str
    model: str | None = None

    @property
    def text(self) -> str:
        return self.kind if self.model is None else f"{self.kind}:{self.model}"


def parse_backbone_spec(spec: str) -> BackboneSpec:
    """Split "clip:ViT-L-14/openai" into kind and model; refuse unknown kinds with one line."""
    kind, _, model = spec.strip().partition(":")
    if kind not in KINDS or (kind == TINY and model):
        raise InvalidInputError(
            f"Unknown backbone '{spec}'; use tiny, clip:MODEL/TAG, timm:NAME or unet[:MODELS]."
        )
    if kind in ("clip", "timm") and not model:
        raise InvalidInputError(f"Backbone '{spec}' needs a model name, e.g. {kind}:tiny.")
    return BackboneSpec(kind, model or (UNET_DEFAULT_MODELS if kind == "unet" else None))


class Backbone(nn.Module):
    """An image encoder: `prepare(images)` -> dict of tensors, `forward(prepared)` -> [b, feature_dim]."""

    spec: str
    feature_dim: int
    recipe: PixelRecipe

    def prepare(self, images: Sequence[Image.Image]) -> dict[str, torch.Tensor]:
        return {"pixels": self.recipe.pixels(images)}

    def frozen_modules(self) -> list[nn.Module]:
        """Models `prepare` runs that live outside the module tree, so moving the backbone does not
        move them: whoever moves it (the low-VRAM turns) moves these along."""
        return []

    def describe(self) -> dict[str, Any]:
        recipe = self.recipe
        pixels = {"size": recipe.size, "mean": list(recipe.mean), "std": list(recipe.std)}
        return {"backbone": self.spec, "feature_dim": self.feature_dim, "pixels": pixels}


class TinyConvNet(Backbone):
    """Three strided convolutions, then average- and max-pooling (colour and shape both survive)."""

    def __init__(self, seed: int = 0):
        super().__init__()
        self.spec = TINY
        self.recipe = PixelRecipe(_TINY_SIDE)
        layers: list[nn.Module] = []
        channels_in = 3
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for channels_out in _TINY_CHANNELS:
                layers += [nn.Conv2d(channels_in, channels_out, 3, stride=2, padding=1), nn.ReLU()]
                channels_in = channels_out
        self.layers = nn.Sequential(*layers)
        self.feature_dim = 2 * channels_in

    def forward(self, prepared: dict[str, torch.Tensor]) -> torch.Tensor:
        maps = self.layers(prepared["pixels"])
        return torch.cat([maps.mean(dim=(2, 3)), maps.amax(dim=(2, 3))], dim=1)


class ImageTower(Backbone):
    """Any module mapping normalised pixels to one vector (open_clip's `visual`, a headless timm model)."""

    def __init__(self, tower: nn.Module, *, spec: str, feature_dim: int, recipe: PixelRecipe):
        super().__init__()
        self.tower = tower
        self.spec = spec
        self.feature_dim = feature_dim
        self.recipe = recipe

    def forward(self, prepared: dict[str, torch.Tensor]) -> torch.Tensor:
        features = self.tower(prepared["pixels"])
        return features[0] if isinstance(features, tuple) else features


class UNetEncoder(Backbone):
    """The encoder half of a Stable Diffusion U-Net, conditioned on a caption of the image.

    Trained: conv_in, the time embedding, the down blocks and the middle block. Frozen and kept outside
    the module tree (so they are neither trained nor saved): the VAE, the text encoder and tokenizer,
    and the captioner.
    """

    def __init__(self, text_to_image, captioner, *, spec: str):
        super().__init__()
        pipeline = text_to_image.pipeline
        unet = pipeline.unet
        if getattr(unet.config, "addition_embed_type", None) is not None:
            raise InvalidInputError(
                f"Backbone '{spec}': only Stable Diffusion 1.x/2.x U-Nets work here (no extra conditioning)."
            )
        self.spec = spec
        self.conv_in = unet.conv_in
        self.time_proj = unet.time_proj
        self.time_embedding = unet.time_embedding
        self.time_embed_act = unet.time_embed_act
        self.down_blocks = unet.down_blocks
        self.mid_block = unet.mid_block
        self.feature_dim = int(unet.config.block_out_channels[-1])
        self.recipe = PixelRecipe(int(text_to_image.height))
        self._frozen = _FrozenParts(pipeline.vae, pipeline.text_encoder, pipeline.tokenizer, captioner)

    def prepare(self, images: Sequence[Image.Image]) -> dict[str, torch.Tensor]:
        frozen = self._frozen
        captions = [frozen.captioner.caption(image) for image in images]
        # no_grad, not inference_mode: these tensors are inputs of the trained encoder's graph.
        with torch.no_grad():
            pixels = self.recipe.pixels(images).to(frozen.vae.device, frozen.vae.dtype)
            latents = frozen.vae.encode(pixels).latent_dist.mean * frozen.vae.config.scaling_factor
            tokens = frozen.tokenizer(
                captions,
                padding="max_length",
                max_length=frozen.tokenizer.model_max_length,
                truncation=True,
                return_tensors="pt",
            )
            states = frozen.text_encoder(tokens.input_ids.to(frozen.text_encoder.device))[0]
        return {"latents": latents.float().cpu(), "caption_states": states.float().cpu()}

    def frozen_modules(self) -> list[nn.Module]:
        # The captioner is not among them: it takes its own turns (tools/captioner.py).
        return [self._frozen.vae, self._frozen.text_encoder]

    def forward(self, prepared: dict[str, torch.Tensor]) -> torch.Tensor:
        latents = prepared["latents"].to(self.conv_in.weight.dtype)
        states = prepared["caption_states"].to(latents.dtype)
        # Timestep 0: the encoder reads the clean latents of the image.
        timesteps = torch.zeros(latents.shape[0], dtype=torch.long, device=latents.device)
        embedding = self.time_embedding(self.time_proj(timesteps).to(latents.dtype))
        if self.time_embed_act is not None:
            embedding = self.time_embed_act(embedding)
        sample = self.conv_in(latents)
        for block in self.down_blocks:
            if getattr(block, "has_cross_attention", False):
                sample, _ = block(hidden_states=sample, temb=embedding, encoder_hidden_states=states)
            else:
                sample, _ = block(hidden_states=sample, temb=embedding)
        if self.mid_block is not None:
            sample = self.mid_block(sample, embedding, encoder_hidden_states=states)
        return sample.mean(dim=(2, 3))

    def describe(self) -> dict[str, Any]:
        return super().describe() | {"captioner": self._frozen.captioner.name}


@dataclass
class _FrozenParts:
    vae: Any
    text_encoder: Any
    tokenizer: Any
    captioner: Any


def build_backbone(spec: str, *, pretrained: bool = True, device: str | None = None, seed: int = 0) -> Backbone:
    """The backbone named by `spec`, with pretrained weights (or, with `pretrained=False`, its bare
    architecture for a checkpoint's weights; the U-Net's frozen parts are always loaded)."""
    parsed = parse_backbone_spec(spec)
    if parsed.kind == TINY:
        return TinyConvNet(seed=seed)
    if parsed.kind == "clip":
        return _clip_tower(parsed, pretrained=pretrained, device=device, seed=seed)
    if parsed.kind == "timm":
        return _timm_model(parsed, pretrained=pretrained, seed=seed)
    return _unet_encoder(parsed, device=device, seed=seed)


def _clip_tower(parsed: BackboneSpec, *, pretrained: bool, device: str | None, seed: int) -> ImageTower:
    from arpo.tools.clip_scorer import ClipScorer, parse_clip_spec, untrained_clip

    if parsed.model == TINY:
        visual = ClipScorer.tiny(seed=seed).model.visual
    else:
        model_name, tag = parse_clip_spec(parsed.model)
        if pretrained or model_name.startswith(("hf-hub:", "local-dir:")):
            visual = ClipScorer.from_pretrained(model_name, tag, device=device).model.visual
        else:
            _check_open_clip_name(model_name)
            visual = untrained_clip(model_name, tag).visual
    return ImageTower(visual, spec=parsed.text, feature_dim=int(visual.output_dim), recipe=_clip_recipe(visual))


def _check_open_clip_name(model_name: str) -> None:
    import open_clip

    if model_name not in open_clip.list_models():
        raise InvalidInputError(f"Unknown open_clip model '{model_name}' (see open_clip.list_models()).")


def _clip_recipe(visual: nn.Module) -> PixelRecipe:
    config = getattr(visual, "preprocess_cfg", None) or {}
    size = config.get("size", getattr(visual, "image_size", 224))
    side = size if isinstance(size, int) else size[0]
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    mean = tuple(config.get("mean", OPENAI_DATASET_MEAN))
    std = tuple(config.get("std", OPENAI_DATASET_STD))
    return PixelRecipe(int(side), mean, std)


def _timm_model(parsed: BackboneSpec, *, pretrained: bool, seed: int) -> ImageTower:
    import timm

    if parsed.model == TINY:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = timm.create_model(
                "vit_tiny_patch16_224", pretrained=False, num_classes=0,
                img_size=_TINY_SIDE, patch_size=8, embed_dim=32, depth=1, num_heads=2,
            )
    else:
        if not timm.is_model(parsed.model.split(".")[0]):
            raise InvalidInputError(f"Unknown timm model '{parsed.model}' (see timm.list_models()).")
        if pretrained:
            model = _pretrained_timm(parsed.model)
        else:
            model = timm.create_model(parsed.model, pretrained=False, num_classes=0)
    recipe = PixelRecipe(_TINY_SIDE) if parsed.model == TINY else _timm_recipe(model)
    return ImageTower(model, spec=parsed.text, feature_dim=int(model.num_features), recipe=recipe)


def _pretrained_timm(name: str) -> nn.Module:
    """A timm model with its Hugging Face weights, read from the local cache unless the hub can answer."""
    import timm
    from huggingface_hub import snapshot_download

    from arpo.tools.hub import load_or_fail, model_unavailable

    hub_id = getattr(timm.models.get_pretrained_cfg(name), "hf_hub_id", None)
    if not hub_id:
        raise model_unavailable(name, "timm knows no Hugging Face weights for it")

    def load(local_files_only: bool) -> nn.Module:
        folder = snapshot_download(
            hub_id,
            local_files_only=local_files_only,
            allow_patterns=["model.safetensors", "pytorch_model.bin", "config.json"],
        )
        candidates = [Path(folder) / name for name in ("model.safetensors", "pytorch_model.bin")]
        weights = next((path for path in candidates if path.is_file()), None)
        if weights is None:
            raise OSError(f"no weights file in {folder}")
        return timm.create_model(name, pretrained=True, num_classes=0, pretrained_cfg_overlay={"file": str(weights)})

    return load_or_fail(hub_id, load)


def _timm_recipe(model: nn.Module) -> PixelRecipe:
    import timm

    config = timm.data.resolve_data_config({}, model=model)
    return PixelRecipe(int(config["input_size"][-1]), tuple(config["mean"]), tuple(config["std"]))


def _unet_encoder(parsed: BackboneSpec, *, device: str | None, seed: int) -> UNetEncoder:
    from arpo.tools.captioner import Captioner
    from arpo.tools.text_to_image import TextToImage

    if parsed.model == TINY:
        return UNetEncoder(TextToImage.tiny(seed=seed), Captioner.tiny(seed=seed), spec=parsed.text)
    text_to_image = TextToImage.from_pretrained(parsed.model, device=device, dtype=torch.float32)
    captioner = Captioner.from_pretrained(UNET_CAPTIONER, device=device)
    return UNetEncoder(text_to_image, captioner, spec=parsed.text)
