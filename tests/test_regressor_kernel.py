"""Domain-adaptive kernel learning against a direct numpy computation of the paper's formulas."""

from __future__ import annotations

import numpy as np
import pytest

from arpo.tools.regressor.kernel_adaptation import KernelAdapter, ensemble_median, second_order_features
from arpo.training.regressor.kernel_fitting import PAPER_GAMMA, fit_kernel_adapter, median_heuristic_gamma


def _direct_dakl(centroids, centroid_targets, target, queries, gamma, ridge):
    anchors = np.vstack([centroids, target])
    everything = np.vstack([anchors, queries])
    kernel = everything @ everything.T  # linear kernel
    diagonal = np.sqrt(np.diag(kernel))
    normalised = kernel / np.outer(diagonal, diagonal)
    rbf = np.exp(-gamma * (1.0 - normalised))
    r, z = len(centroids), len(anchors)
    train_features, query_features = rbf[:r, :z], rbf[z:, :z]
    gram = train_features @ train_features.T  # linear kernel on the second-order features
    penalty = ridge * np.mean(np.diag(gram))  # the ridge is relative to the Gram matrix's scale
    dual = np.linalg.solve(gram + penalty * np.eye(r), centroid_targets)
    return query_features @ train_features.T @ dual


def test_kernel_step_matches_direct_numpy_computation():
    rng = np.random.default_rng(0)
    train = rng.normal(size=(40, 6))
    targets = rng.normal(size=(40, 4))
    target_domain = rng.normal(loc=0.5, size=(7, 6))
    queries = rng.normal(size=(5, 6))

    adapter = fit_kernel_adapter(train, targets, target_domain, clusters=8, gamma=0.7, ridge=0.3, seed=0)

    assert adapter.centroid_count == 8 and adapter.anchors.shape == (15, 6)
    np.testing.assert_allclose(adapter.anchors[8:], target_domain)
    labels = np.argmin(((train[:, None, :] - adapter.centroids[None]) ** 2).sum(-1), axis=1)
    centroid_targets = np.stack([targets[labels == c].mean(axis=0) for c in range(8)])
    expected = _direct_dakl(adapter.centroids, centroid_targets, target_domain, queries, gamma=0.7, ridge=0.3)
    np.testing.assert_allclose(adapter.transform(queries), expected, rtol=1e-6, atol=1e-8)


def test_rbf_features_are_one_for_identical_directions():
    samples = np.array([[1.0, 0.0], [0.0, 2.0]])
    features = second_order_features(samples, np.array([[3.0, 0.0], [0.0, 1.0]]), gamma=2.0)
    np.testing.assert_allclose(features, [[1.0, np.exp(-2.0)], [np.exp(-2.0), 1.0]])


def test_saved_adapter_predicts_the_same(tmp_path):
    rng = np.random.default_rng(1)
    adapter = fit_kernel_adapter(rng.normal(size=(20, 5)), rng.normal(size=(20, 3)), rng.normal(size=(4, 5)), clusters=6)
    queries = rng.normal(size=(3, 5))
    restored = KernelAdapter.load(adapter.save(tmp_path / "adapter.npz"))
    np.testing.assert_allclose(restored.transform(queries), adapter.transform(queries), rtol=1e-10)
    assert restored.gamma == adapter.gamma and restored.centroid_count == 6


def test_clusters_are_capped_by_distinct_training_samples():
    train = np.repeat(np.eye(3), 2, axis=0)
    adapter = fit_kernel_adapter(train, train, np.ones((1, 3)), clusters=100)
    assert adapter.centroid_count == 3


def test_ensemble_median_is_elementwise():
    first, second, third = np.array([[0.0, 5.0]]), np.array([[1.0, 1.0]]), np.array([[9.0, 2.0]])
    np.testing.assert_allclose(ensemble_median([first, second, third]), [[1.0, 2.0]])
    with pytest.raises(ValueError):
        ensemble_median([])


def _unit(rows):
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def _distorted_regressor_toy(seed, dims=16, prompts=24, per_prompt=5, noise=0.05):
    """A prompt bank and a regressor that is systematically off: its predictions are a mixed-up copy
    of the true embedding plus a shared offset, so raw retrieval is poor but learnable.

    Returns the bank, training predictions with their true embeddings, and a held-out set (two new
    images of every prompt) as predictions with the bank index of their prompt.
    """
    rng = np.random.default_rng(seed)
    bank = _unit(rng.normal(size=(prompts, dims)) + rng.normal(size=dims))  # sentence embeddings share a direction
    mixing = 0.5 * np.eye(dims) + rng.normal(size=(dims, dims)) / np.sqrt(dims)
    offset = 0.3 * rng.normal(size=dims)

    def predict(indices):
        return bank[indices] @ mixing.T + offset + noise * rng.normal(size=(len(indices), dims))

    train, held_out = np.repeat(np.arange(prompts), per_prompt), np.repeat(np.arange(prompts), 2)
    return bank, predict(train), bank[train], predict(held_out), held_out


def _retrieval_accuracy(bank, predictions, truth):
    from sklearn.metrics.pairwise import cosine_similarity

    return float(np.mean(np.argmax(cosine_similarity(predictions, bank), axis=1) == truth))


def _top_five(bank, prediction):
    from sklearn.metrics.pairwise import cosine_similarity

    return list(np.argsort(-cosine_similarity(prediction[None], bank)[0])[:5])


def test_default_adaptation_tells_different_images_apart():
    """Defect: with γ = 0.001 on cosine features every adapted prediction was the same vector, so a
    red circle and a yellow square retrieved the same five prompts with scores 1e-7 apart."""
    bank, train, targets, held_out, truth = _distorted_regressor_toy(seed=0)
    adapter = fit_kernel_adapter(train, targets, held_out)
    first, second = np.flatnonzero(truth == 0)[0], np.flatnonzero(truth == 7)[0]
    adapted = adapter.transform(held_out[[first, second]])
    cosine = adapted[0] @ adapted[1] / np.linalg.norm(adapted[0]) / np.linalg.norm(adapted[1])
    assert cosine < 0.95
    assert _top_five(bank, adapted[0]) != _top_five(bank, adapted[1])
    assert adapter.gamma == pytest.approx(median_heuristic_gamma(adapter.anchors))


def test_adaptation_does_not_lower_held_out_retrieval_accuracy():
    for seed in range(3):
        bank, train, targets, held_out, truth = _distorted_regressor_toy(seed=seed)
        raw = _retrieval_accuracy(bank, held_out, truth)
        adapted = _retrieval_accuracy(bank, fit_kernel_adapter(train, targets, held_out).transform(held_out), truth)
        assert adapted >= raw
        assert adapted >= 0.9  # the systematic error is learnt, not only left alone


def test_paper_gamma_collapses_toy_predictions_which_is_why_it_is_not_the_default():
    bank, train, targets, held_out, truth = _distorted_regressor_toy(seed=0)
    adapted = fit_kernel_adapter(train, targets, held_out, gamma=PAPER_GAMMA).transform(held_out)
    assert np.ptp(adapted, axis=0).max() < 0.02 * np.abs(adapted).max()


def test_median_heuristic_puts_the_median_anchor_pair_at_exp_minus_one():
    rng = np.random.default_rng(3)
    anchors = rng.normal(size=(30, 8)) + 4.0  # near-parallel rows: cosines all close to 1
    gamma = median_heuristic_gamma(anchors)
    features = second_order_features(anchors, anchors, gamma)[np.triu_indices(30, k=1)]
    assert np.median(features) == pytest.approx(np.exp(-1.0))
    assert median_heuristic_gamma(np.ones((4, 3))) == 1.0  # nothing to measure: a neutral γ
