"""Evaluation metrics on tiny in-code models: identities, constructed orderings, recorded models, fail-fast loading."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

from arpo.core.errors import InvalidInputError, ModelUnavailableError
from arpo.eval.metrics.image_embeddings import ImageEmbeddingSimilarity
from arpo.eval.metrics.perceptual import LpipsDistance
from arpo.eval.metrics.perplexity import PromptPerplexity
from arpo.eval.metrics.suite import METRIC_NAMES, ScoredPrompt, build_metric_suite, parse_metric_names
from arpo.eval.metrics.text_similarity import BertScore
from arpo.tools.clip_scorer import ClipScorer


def _noise_image(seed: int, side: int = 64) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8))


def _smooth_image(side: int = 64) -> Image.Image:
    ramp = np.linspace(0, 255, side, dtype=np.float32)
    pixels = np.stack([np.add.outer(ramp, ramp) / 2, np.tile(ramp, (side, 1)), np.full((side, side), 90.0)], axis=-1)
    return Image.fromarray(pixels.astype(np.uint8))


def _slightly_changed(image: Image.Image) -> Image.Image:
    pixels = np.asarray(image).astype(np.int16)
    pixels[:4, :4] = 255 - pixels[:4, :4]  # a 4x4 corner patch inverted
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def suite():
    return build_metric_suite(ClipScorer.tiny(), tiny=True)


def test_an_image_against_itself_scores_perfectly(suite):
    image = _smooth_image()
    scores = suite.score(ScoredPrompt(image, "a gradient", image, ground_truth="a gradient"))

    assert scores["clip_i"].value == pytest.approx(100.0, abs=1e-3)
    assert scores["dino"].value == pytest.approx(100.0, abs=1e-3)
    assert scores["vit"].value == pytest.approx(100.0, abs=1e-3)
    assert scores["lpips"].value == pytest.approx(0.0, abs=1e-6)
    assert scores["bertscore"].value == pytest.approx(1.0, abs=1e-5)


def test_each_score_names_the_model_that_computed_it(suite):
    image = _smooth_image()
    scores = suite.score(ScoredPrompt(image, "a gradient", _noise_image(1), ground_truth="a ramp"))

    assert set(scores) == set(METRIC_NAMES)
    assert {name: score.model for name, score in scores.items()} == suite.models()
    assert scores["clip_t"].model == "tiny-clip-seed0"
    assert scores["dino"].model != scores["vit"].model  # two different tiny encoders, not one under two names


def test_bertscore_is_left_out_without_a_ground_truth(suite):
    image = _smooth_image()
    scores = suite.score(ScoredPrompt(image, "a gradient", image))
    assert "bertscore" not in scores
    assert "perplexity" in scores


def test_image_metrics_rank_a_small_edit_closer_than_an_unrelated_image(suite):
    reference = _smooth_image()
    near, far = _slightly_changed(reference), _noise_image(7)

    assert suite.lpips.distance(reference, near).value < suite.lpips.distance(reference, far).value
    assert suite.dino.similarity(reference, near).value > suite.dino.similarity(reference, far).value
    assert suite.vit.similarity(reference, near).value > suite.vit.similarity(reference, far).value
    assert suite.clip.clip_i(reference, near).value > suite.clip.clip_i(reference, far).value


def test_bertscore_ranks_shared_words_above_unrelated_words(suite):
    truth = "a red fox sleeping in the snow"
    close = suite.bertscore.score("a red fox sleeping in snow", truth).value
    unrelated = suite.bertscore.score("quarterly tax forms on a desk", truth).value
    assert 1.0 > close > unrelated


def test_clip_t_is_the_scorers_cosine_times_100(suite):
    image, prompt = _smooth_image(), "an orange gradient"
    scorer = suite.clip.scorer
    expected = 100 * scorer.text_image_similarity(scorer.encode_images([image])[0], [prompt])[0]
    assert suite.clip.clip_t(image, prompt).value == pytest.approx(expected, abs=1e-4)


def test_perplexity_of_a_model_with_uniform_predictions_is_the_vocabulary_size():
    metric = PromptPerplexity.tiny()
    with torch.no_grad():
        metric.model.lm_head.weight.zero_()  # tied to the input embeddings: every logit becomes 0
    value = metric.score("a cat sitting on a windowsill").value
    assert value == pytest.approx(len(metric.tokenizer), rel=1e-3)


def test_parse_metric_names():
    assert parse_metric_names(None) == METRIC_NAMES
    assert parse_metric_names("all") == METRIC_NAMES
    assert parse_metric_names("lpips, CLIP-T") == ("clip_t", "lpips")  # table order, either spelling
    with pytest.raises(InvalidInputError, match="unknown metric 'fid'"):
        parse_metric_names("clip_i,fid")


@pytest.mark.parametrize(
    ("load", "model_name"),
    [
        (lambda: ImageEmbeddingSimilarity.from_pretrained("dino"), "facebook/dino-vits16"),
        (lambda: ImageEmbeddingSimilarity.from_pretrained("vit"), "google/vit-large-patch16-224"),
        (lambda: BertScore.from_pretrained(), "roberta-large"),
        (lambda: PromptPerplexity.from_pretrained(), "gpt2"),
        (lambda: LpipsDistance.from_pretrained(), "lpips-alex"),
    ],
)
def test_real_metric_models_fail_fast_when_weights_are_missing(load, model_name, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelUnavailableError, match="--models tiny") as raised:
        load()
    assert model_name in str(raised.value)
    assert "\n" not in str(raised.value)


@pytest.mark.real_weights
@pytest.mark.skipif(os.environ.get("ARPO_REAL_WEIGHTS") != "1", reason="needs cached weights (ARPO_REAL_WEIGHTS=1)")
def test_real_metric_models_score_identities():
    suite = build_metric_suite(ClipScorer.from_pretrained(), tiny=False)
    image = _smooth_image(224)
    scores = suite.score(ScoredPrompt(image, "an orange gradient", image, ground_truth="an orange gradient"))
    assert scores["dino"].value == pytest.approx(100.0, abs=1e-2)
    assert scores["lpips"].value == pytest.approx(0.0, abs=1e-5)
    assert scores["bertscore"].value == pytest.approx(1.0, abs=1e-4)
    assert scores["perplexity"].model == "gpt2"
