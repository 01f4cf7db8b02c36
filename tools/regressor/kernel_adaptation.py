"""Domain-adaptive kernel learning (DAKL) as applied at prediction time: a fitted kernel meta-regressor
that maps predicted embeddings to improved ones.

Inputs are predicted embeddings: for an ensemble of regressors, their element-wise median
(`ensemble_median`). The training set is summarised by k-means centroids of its predicted embeddings,
each labelled with the mean target embedding of its members. The centroids and the target-domain
samples together form the anchor set Z. Every sample is described by its similarity to all anchors:
the linear kernel, normalised (K_ij / sqrt(K_ii K_jj), i.e. cosine similarity), then passed through the
RBF transform exp(-γ (1 - K̂)). A kernel ridge regression with a linear kernel on these second-order
features, solved in the dual, maps them to the improved prompt embedding. Because target samples are
anchors, the features (and so the regression) know the target domain without any of its labels.

Fitting an adapter (k-means, choosing γ and the ridge) is training: `arpo.training.regressor.kernel_fitting`.
This module holds what a prediction needs: the features, the fitted adapter and its file.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from arpo.core.errors import InvalidInputError


def ensemble_median(predictions: Sequence[np.ndarray]) -> np.ndarray:
    """Element-wise median of several models' [n, d] predicted embeddings."""
    if not predictions:
        raise ValueError("need at least one model's predictions")
    return np.median(np.stack([np.asarray(p, dtype=np.float64) for p in predictions]), axis=0)


def second_order_features(samples: np.ndarray, anchors: np.ndarray, gamma: float) -> np.ndarray:
    """[n, r + p]: exp(-γ (1 - normalised linear kernel)) between each sample and each anchor."""
    from sklearn.metrics.pairwise import cosine_similarity

    return np.exp(-gamma * (1.0 - cosine_similarity(samples, anchors)))


@dataclass
class KernelAdapter:
    """A fitted DAKL meta-regressor: anchors (centroids then target samples), γ, and the dual ridge model."""

    anchors: np.ndarray
    centroid_count: int
    gamma: float
    ridge: object
    """sklearn.kernel_ridge.KernelRidge(kernel="linear"), fitted on the centroids' features."""

    @property
    def centroids(self) -> np.ndarray:
        return self.anchors[: self.centroid_count]

    def transform(self, embeddings: np.ndarray) -> np.ndarray:
        """Adapted embeddings [n, d] for predicted (median) embeddings [n, d]."""
        features = second_order_features(np.asarray(embeddings, dtype=np.float64), self.anchors, self.gamma)
        return np.asarray(self.ridge.predict(features), dtype=np.float64)

    def save(self, path: str | Path) -> Path:
        """Store as .npz (anchors, dual coefficients, settings); no pickles."""
        path = Path(path).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as handle:  # np.savez would append ".npz" to other names
            np.savez(
                handle,
                anchors=self.anchors,
                dual_coef=self.ridge.dual_coef_,
                centroid_count=self.centroid_count,
                gamma=self.gamma,
                ridge_alpha=self.ridge.alpha,
            )
        return path

    @classmethod
    def load(cls, path: str | Path) -> "KernelAdapter":
        from sklearn.kernel_ridge import KernelRidge

        try:
            with np.load(Path(path).expanduser(), allow_pickle=False) as stored:
                anchors, dual = stored["anchors"], stored["dual_coef"]
                count, gamma = int(stored["centroid_count"]), float(stored["gamma"])
                alpha = float(stored["ridge_alpha"])
        except (OSError, ValueError, KeyError) as error:
            raise InvalidInputError(f"'{path}' is not a kernel adapter file ({error.__class__.__name__}).") from None
        ridge = KernelRidge(alpha=alpha, kernel="linear")
        # A linear-kernel ridge predicts features @ X_fit.T @ dual_coef; restore exactly those two arrays.
        ridge.X_fit_ = second_order_features(anchors[:count], anchors, gamma)
        ridge.dual_coef_ = dual
        ridge.n_features_in_ = ridge.X_fit_.shape[1]
        return cls(anchors, count, gamma, ridge)
