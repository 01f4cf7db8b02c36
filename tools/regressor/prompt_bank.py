"""From a predicted embedding back to text: the nearest prompts of a bank, with their similarities.

A bank is a list of prompts embedded in the regressor's target space. A file of prompts is embedded
once and cached under $ARPO_HOME/cache/regressor-prompt-banks, keyed by the space and the prompts, so
a later run loads the vectors instead of re-encoding (and does not even load the encoder).
A checkpoint carries its own bank: the training prompts with the embeddings computed for training.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from arpo.core.errors import InvalidInputError
from arpo.tools.cache_paths import cache_dir, file_safe, list_hash, write_cache_file

CACHE_NAME = "regressor-prompt-banks"


@dataclass(frozen=True)
class PromptMatch:
    prompt: str
    similarity: float
    """Cosine similarity between the bank prompt's embedding and the query embedding."""


class PromptBank:
    """Prompts and their unit-length embeddings in one sentence space, searchable by cosine similarity."""

    def __init__(self, prompts: Sequence[str], embeddings: np.ndarray, space_name: str):
        embeddings = np.asarray(embeddings, dtype=np.float32)
        if embeddings.ndim != 2 or embeddings.shape[0] != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but embeddings of shape {embeddings.shape}")
        self.prompts = list(prompts)
        self.embeddings = _unit_rows(embeddings)
        self.space_name = space_name

    def __len__(self) -> int:
        return len(self.prompts)

    def top_k(self, embedding: np.ndarray, k: int = 5) -> list[PromptMatch]:
        """The `k` prompts closest to `embedding`, best first (ties keep bank order)."""
        if k <= 0 or not self.prompts:
            return []
        query = _unit_rows(np.asarray(embedding, dtype=np.float32).reshape(1, -1))[0]
        if query.shape[0] != self.embeddings.shape[1]:
            raise InvalidInputError(
                f"Embedding has {query.shape[0]} dimensions but the prompt bank's space "
                f"'{self.space_name}' has {self.embeddings.shape[1]}."
            )
        scores = self.embeddings @ query
        order = np.argsort(-scores, kind="stable")[:k]
        return [PromptMatch(self.prompts[index], float(scores[index])) for index in order]

    @classmethod
    def from_prompts(cls, prompts: Sequence[str], space) -> "PromptBank":
        unique = unique_prompts(prompts)
        return cls(unique, space.encode(unique), space.name)

    @classmethod
    def from_file(cls, path: str | Path, space_name: str, load_space: Callable[[str], object]) -> "PromptBank":
        """The prompts in `path` (text: one per line; .json: a list; .jsonl: objects with "prompt"),
        embedded with the space named `space_name`, which `load_space(name)` builds on a cache miss."""
        prompts = unique_prompts(read_prompt_file(path))
        if not prompts:
            raise InvalidInputError(f"Prompt bank '{path}' holds no prompts.")
        cache_path = cache_dir(CACHE_NAME) / f"{file_safe(space_name, 'space')}-{list_hash(prompts)}.npy"
        embeddings = _read_cached(cache_path, len(prompts))
        if embeddings is None:
            embeddings = load_space(space_name).encode(prompts)
            write_cache_file(cache_path, lambda file: np.save(file, np.asarray(embeddings, dtype=np.float32), allow_pickle=False))
        return cls(prompts, embeddings, space_name)


def read_prompt_file(path: str | Path) -> list[str]:
    """The prompts of a bank file; InvalidInputError if it cannot be read."""
    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise InvalidInputError(f"Cannot read prompt bank '{path}': {error.__class__.__name__}.") from None
    try:
        if path.suffix == ".json":
            return [str(item) for item in json.loads(text)]
        if path.suffix == ".jsonl":
            return [str(json.loads(line)["prompt"]) for line in text.splitlines() if line.strip()]
    except (ValueError, KeyError, TypeError):
        raise InvalidInputError(f"Prompt bank '{path}' is not a {path.suffix} list of prompts.") from None
    return text.splitlines()


def unique_prompts(prompts: Sequence[str]) -> list[str]:
    """Prompts with surrounding whitespace removed, blanks and repeats dropped, first occurrence kept."""
    return list(dict.fromkeys(prompt.strip() for prompt in prompts if prompt and prompt.strip()))


def _unit_rows(matrix: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return (matrix / np.maximum(norms, 1e-12)).astype(np.float32)


def _read_cached(path: Path, rows: int) -> np.ndarray | None:
    if not path.is_file():
        return None
    try:
        embeddings = np.load(path, allow_pickle=False)
    except (OSError, ValueError):  # a damaged cache file is rebuilt
        return None
    return embeddings if embeddings.ndim == 2 and embeddings.shape[0] == rows else None


