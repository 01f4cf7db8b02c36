"""The value one metric gives one recovered prompt, with the model that computed it."""

from __future__ import annotations

from dataclasses import dataclass

METRIC_NAMES = ("clip_t", "clip_i", "dino", "vit", "lpips", "bertscore", "perplexity")
"""Every metric the evaluation knows, in the order tables show them."""

METRIC_LABELS = {
    "clip_t": "CLIP-T",
    "clip_i": "CLIP-I",
    "dino": "DINO",
    "vit": "ViT",
    "lpips": "LPIPS",
    "bertscore": "BERTScore",
    "perplexity": "PPL",
}

LOWER_IS_BETTER = frozenset({"lpips", "perplexity"})
"""Metrics where a smaller number means a better prompt; every other metric is better when higher."""


@dataclass(frozen=True)
class MetricScore:
    """One metric's value for one (reference, prompt, regenerated image) triple."""

    metric: str
    value: float
    model: str
    """Which model computed the value (a Hugging Face id, an open_clip name, or a tiny model's name)."""
