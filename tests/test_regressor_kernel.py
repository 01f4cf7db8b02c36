"""Domain-adaptive kernel learning against a direct numpy computation of the paper's formulas."""

from __future__ import annotations

import numpy as np
import pytest

from arpo.tools.regressor.kernel_adaptation import (
    KernelAdapter,
    ensemble_median,
    fit_kernel_adapter,
    second_order_features,
)


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
    dual = np.linalg.solve(gram + ridge * np.eye(r), centroid_targets)
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
