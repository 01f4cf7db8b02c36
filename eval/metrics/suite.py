"""All the metrics of one evaluation, loaded together and applied to one recovered prompt at a time."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from arpo.core.errors import InvalidInputError
from arpo.eval.metrics.scores import METRIC_NAMES, MetricScore

if TYPE_CHECKING:
    from PIL import Image

    from arpo.eval.metrics.clip_similarity import ClipSimilarity
    from arpo.eval.metrics.image_embeddings import ImageEmbeddingSimilarity
    from arpo.eval.metrics.perceptual import LpipsDistance
    from arpo.eval.metrics.perplexity import PromptPerplexity
    from arpo.eval.metrics.text_similarity import BertScore
    from arpo.tools.clip_scorer import ClipScorer


@dataclass
class ScoredPrompt:
    """What the suite needs about one recovered prompt."""

    reference: Image.Image
    prompt: str
    generated: Image.Image
    ground_truth: str | None = None


@dataclass
class MetricSuite:
    """The chosen metrics; a metric left as None is not computed."""

    clip: ClipSimilarity | None = None
    dino: ImageEmbeddingSimilarity | None = None
    vit: ImageEmbeddingSimilarity | None = None
    lpips: LpipsDistance | None = None
    bertscore: BertScore | None = None
    perplexity: PromptPerplexity | None = None
    names: tuple[str, ...] = field(default=METRIC_NAMES)

    def score(self, item: ScoredPrompt) -> dict[str, MetricScore]:
        """Every chosen metric that applies (BERTScore only with a ground-truth prompt)."""
        scores: list[MetricScore] = []
        if self.clip is not None and ("clip_t" in self.names or "clip_i" in self.names):
            prompt = item.prompt if "clip_t" in self.names else None
            generated = item.generated if "clip_i" in self.names else None
            scores.extend(self.clip.scores(item.reference, prompt, generated))
        for metric in (self.dino, self.vit):
            if metric is not None:
                scores.append(metric.similarity(item.reference, item.generated))
        if self.lpips is not None:
            scores.append(self.lpips.distance(item.reference, item.generated))
        if self.bertscore is not None and item.ground_truth:
            scores.append(self.bertscore.score(item.prompt, item.ground_truth))
        if self.perplexity is not None:
            scores.append(self.perplexity.score(item.prompt))
        return {score.metric: score for score in scores}

    def models(self) -> dict[str, str]:
        """Metric name -> the model that computes it."""
        named = {
            "clip_t": self.clip, "clip_i": self.clip, "dino": self.dino, "vit": self.vit,
            "lpips": self.lpips, "bertscore": self.bertscore, "perplexity": self.perplexity,
        }
        found = {}
        for metric, tool in named.items():
            if tool is None or metric not in self.names:
                continue
            found[metric] = getattr(tool, "model_name", None) or tool.name
        return found


# Different seeds, so the two tiny encoders are not the same network under two names.
_TINY_SEEDS = {"dino": 0, "vit": 1}


def parse_metric_names(text: str | Iterable[str] | None) -> tuple[str, ...]:
    """Metric names from "clip_t,clip_i" (or a list); all metrics when None or "all"."""
    if text is None:
        return METRIC_NAMES
    raw = text.split(",") if isinstance(text, str) else list(text)
    names = [name.strip().lower().replace("-", "_") for name in raw if name.strip()]
    if not names or names == ["all"]:
        return METRIC_NAMES
    unknown = [name for name in names if name not in METRIC_NAMES]
    if unknown:
        raise InvalidInputError(f"unknown metric {unknown[0]!r}; choose from {', '.join(METRIC_NAMES)}")
    return tuple(name for name in METRIC_NAMES if name in names)


def build_metric_suite(
    clip: ClipScorer, *, tiny: bool, names: Iterable[str] = METRIC_NAMES, device: str | None = None
) -> MetricSuite:
    """Load the chosen metrics: tiny random models when `tiny`, else the real ones by id.

    CLIP-T and CLIP-I reuse the given scorer (the stack's), as the thesis scores with the same CLIP
    ViT-L/14 that guides the loop. Real weights that are not available fail here, before any work.
    """
    from arpo.eval.metrics.clip_similarity import ClipSimilarity
    from arpo.eval.metrics.image_embeddings import ImageEmbeddingSimilarity
    from arpo.eval.metrics.perceptual import LpipsDistance
    from arpo.eval.metrics.perplexity import PromptPerplexity
    from arpo.eval.metrics.text_similarity import BertScore

    chosen = tuple(name for name in METRIC_NAMES if name in set(names))
    suite = MetricSuite(names=chosen)
    if {"clip_t", "clip_i"} & set(chosen):
        suite.clip = ClipSimilarity(clip)
    for metric in ("dino", "vit"):
        if metric in chosen:
            built = ImageEmbeddingSimilarity.tiny(metric, seed=_TINY_SEEDS[metric]) if tiny else ImageEmbeddingSimilarity.from_pretrained(metric, device=device)
            setattr(suite, metric, built)
    if "lpips" in chosen:
        suite.lpips = LpipsDistance.tiny() if tiny else LpipsDistance.from_pretrained(device=device)
    if "bertscore" in chosen:
        suite.bertscore = BertScore.tiny() if tiny else BertScore.from_pretrained(device=device)
    if "perplexity" in chosen:
        suite.perplexity = PromptPerplexity.tiny() if tiny else PromptPerplexity.from_pretrained(device=device)
    return suite
