"""DINO and ViT image fidelity: cosine similarity of two images' ViT class-token embeddings, × 100.

The thesis scores style and detail with DINO's ViT-S/16 (`facebook/dino-vits16`) and more complex
features with a supervised ViT-L/16 (`google/vit-large-patch16-224`). Both are plain ViT encoders in
transformers, so one class serves both; the class token of the last layer is the image embedding, as
in the DINO paper's evaluation.
"""

from __future__ import annotations

import threading
from typing import Any

import torch
from PIL import Image
from transformers import AutoImageProcessor, ViTConfig, ViTImageProcessor, ViTModel

from arpo.eval.metrics.scores import MetricScore
from arpo.tools.devices import pick_device
from arpo.tools.hub import load_or_fail

DINO_MODEL = "facebook/dino-vits16"
VIT_MODEL = "google/vit-large-patch16-224"
DEFAULT_MODELS = {"dino": DINO_MODEL, "vit": VIT_MODEL}
SCALE = 100.0
_TINY_IMAGE_SIDE = 32


class ImageEmbeddingSimilarity:
    """One ViT encoder scoring image pairs under one metric name ("dino" or "vit")."""

    def __init__(self, model: ViTModel, processor: Any, *, metric: str, name: str) -> None:
        self.model = model.eval()
        self.processor = processor
        self.metric = metric
        self.name = name
        self._lock = threading.Lock()

    def embed(self, images: list[Image.Image]) -> torch.Tensor:
        """[n, d] unit-length class-token embeddings."""
        pixels = self.processor(images=[image.convert("RGB") for image in images], return_tensors="pt")
        pixel_values = pixels["pixel_values"].to(self.model.device, self.model.dtype)
        with self._lock, torch.inference_mode():
            hidden = self.model(pixel_values=pixel_values).last_hidden_state
        cls_tokens = hidden[:, 0].float().cpu()
        return torch.nn.functional.normalize(cls_tokens, dim=-1)

    def similarity(self, reference: Image.Image, generated: Image.Image) -> MetricScore:
        """100 × cosine of the two images' embeddings."""
        first, second = self.embed([reference, generated])
        value = float(torch.clamp(first @ second, -1.0, 1.0))
        return MetricScore(self.metric, SCALE * value, self.name)

    @classmethod
    def from_pretrained(cls, metric: str, model_id: str | None = None, device: str | None = None) -> "ImageEmbeddingSimilarity":
        """Load the metric's encoder by Hugging Face id (DINO ViT-S/16 or ViT-L/16 by default)."""
        name = model_id or DEFAULT_MODELS[metric]

        def load(local_files_only: bool) -> tuple[ViTModel, Any]:
            model = ViTModel.from_pretrained(name, add_pooling_layer=False, local_files_only=local_files_only)
            processor = AutoImageProcessor.from_pretrained(name, local_files_only=local_files_only)
            return model, processor

        model, processor = load_or_fail(name, load)
        model.to(pick_device(device))
        return cls(model, processor, metric=metric, name=name)

    @classmethod
    def tiny(cls, metric: str, seed: int = 0) -> "ImageEmbeddingSimilarity":
        """A random two-layer ViT on 32-pixel images; the same seed builds the same weights."""
        config = ViTConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=37,
            image_size=_TINY_IMAGE_SIDE,
            patch_size=8,
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = ViTModel(config, add_pooling_layer=False)
        processor = ViTImageProcessor(size={"height": _TINY_IMAGE_SIDE, "width": _TINY_IMAGE_SIDE})
        return cls(model, processor, metric=metric, name=f"tiny-{metric}-seed{seed}")
