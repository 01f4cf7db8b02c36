"""CLIP-T and CLIP-I, the thesis's prompt- and image-fidelity scores, on the run's own CLIP scorer.

Both are cosine similarities multiplied by 100, as Table 4.2 of the ARPO thesis prints them:
CLIP-T compares the reference image with the recovered prompt, CLIP-I the reference image with the
image regenerated from that prompt.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from arpo.eval.metrics.scores import MetricScore

if TYPE_CHECKING:
    from PIL import Image

    from arpo.tools.clip_scorer import ClipScorer

SCALE = 100.0


class ClipSimilarity:
    """CLIP-T and CLIP-I from one ClipScorer (ViT-L-14/openai for real stacks, tiny in tests)."""

    def __init__(self, scorer: ClipScorer) -> None:
        self.scorer = scorer

    @property
    def model_name(self) -> str:
        return self.scorer.name

    def clip_t(self, reference: Image.Image, prompt: str) -> MetricScore:
        """100 × cosine(CLIP image embedding of the reference, CLIP text embedding of the prompt)."""
        return self.scores(reference, prompt, None)[0]

    def clip_i(self, reference: Image.Image, generated: Image.Image) -> MetricScore:
        """100 × cosine of the two images' CLIP embeddings."""
        return self.scores(reference, None, generated)[0]

    def scores(self, reference: Image.Image, prompt: str | None, generated: Image.Image | None) -> list[MetricScore]:
        """CLIP-T (with a prompt) and CLIP-I (with a generated image), encoding the images in one pass."""
        embeddings = self.scorer.encode_images([reference] + ([generated] if generated is not None else []))
        scores = []
        if prompt is not None:
            value = self.scorer.text_image_similarity(embeddings[0], [prompt])[0]
            scores.append(MetricScore("clip_t", SCALE * value, self.model_name))
        if generated is not None:
            value = self.scorer.image_similarity(embeddings[0], embeddings[1])
            scores.append(MetricScore("clip_i", SCALE * value, self.model_name))
        return scores
