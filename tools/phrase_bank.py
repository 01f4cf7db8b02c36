"""Phrase banks (clip-interrogator's mediums, movements, flavors, artists) and a CLIP index over them.

The offline proposer draws candidate phrases from these banks; `PhraseIndex` embeds a bank once
(cached on disk per scorer and phrase list) and returns the phrases closest to an image.
"""

from collections.abc import Iterable, Sequence
from importlib import resources
from pathlib import Path

import torch

from arpo.errors import InvalidInputError
from arpo.tools.cache_paths import cache_dir as arpo_cache_dir, file_safe, list_hash, write_cache_file
from arpo.tools.clip_scorer import ClipScorer

BANK_NAMES = ("mediums", "movements", "flavors", "artists")
# Big enough to keep the forward count low, small enough that a ViT-L text batch fits in memory.
DEFAULT_BATCH_SIZE = 2048


def load_phrase_bank(
    names: Iterable[str] = BANK_NAMES, max_phrases_per_bank: int | None = None
) -> dict[str, list[str]]:
    """Phrases of each named bank, in file order, blanks removed and duplicates dropped.

    Artist names become "by <name>", the way they read in a prompt. `max_phrases_per_bank` keeps only
    the first N of each bank (the flavors bank alone has about 100k lines).
    """
    banks = {}
    for name in names:
        lines = _bank_lines(name)
        if name == "artists":
            lines = [f"by {artist}" for artist in lines]
        phrases = list(dict.fromkeys(lines))
        banks[name] = phrases[:max_phrases_per_bank] if max_phrases_per_bank is not None else phrases
    return banks


def normalize_phrase(phrase: str) -> str:
    """The form phrases are compared in: lower case, single spaces, no surrounding punctuation."""
    return " ".join(phrase.lower().split()).strip(" ,.;:")


class PhraseIndex:
    """CLIP text embeddings of a fixed phrase list, searchable by image embedding.

    The phrases are embedded once, in large batches; the tensor is cached on disk under a key made of
    the scorer's name and a hash of the phrase list, so the next run (or process) loads it instead.
    """

    def __init__(
        self,
        scorer: ClipScorer,
        phrases: Sequence[str],
        cache_dir: Path | None = None,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ):
        self.scorer = scorer
        self.phrases = list(dict.fromkeys(phrase.strip() for phrase in phrases if phrase.strip()))
        self.cache_dir = Path(cache_dir) if cache_dir is not None else arpo_cache_dir("phrase-embeddings")
        self.cache_path = self.cache_dir / f"{file_safe(scorer.name, 'scorer')}-{list_hash(self.phrases)}.pt"
        self.embeddings = self._load_or_embed(batch_size)
        self._positions_by_phrase = _positions_by_normalized_phrase(self.phrases)

    def __len__(self) -> int:
        return len(self.phrases)

    def top_k(
        self, image_embedding: torch.Tensor, k: int, exclude: Iterable[str] = frozenset()
    ) -> list[tuple[str, float]]:
        """The `k` phrases most similar to the image, best first, as (phrase, cosine similarity).

        Phrases in `exclude` are skipped (compared case- and spacing-insensitively).
        """
        if k <= 0 or not self.phrases:
            return []
        reference = torch.as_tensor(image_embedding, dtype=torch.float32).flatten()
        reference = reference / reference.norm().clamp_min(1e-12)
        scores = self.embeddings @ reference
        for excluded in exclude:
            for position in self._positions_by_phrase.get(normalize_phrase(excluded), ()):
                scores[position] = float("-inf")
        available = int(torch.isfinite(scores).sum())
        best = torch.topk(scores, min(k, available))
        return [(self.phrases[position], float(score)) for score, position in zip(best.values, best.indices)]

    def _load_or_embed(self, batch_size: int) -> torch.Tensor:
        cached = self._read_cache()
        if cached is not None:
            return cached
        embeddings = self._embed(batch_size)
        self._write_cache(embeddings)
        return embeddings

    def _embed(self, batch_size: int) -> torch.Tensor:
        if not self.phrases:
            return torch.empty(0, self.scorer.embedding_size())
        batches = [
            self.scorer.encode_texts(self.phrases[start : start + batch_size])
            for start in range(0, len(self.phrases), batch_size)
        ]
        return torch.cat(batches)

    def _read_cache(self) -> torch.Tensor | None:
        if not self.cache_path.is_file():
            return None
        try:
            embeddings = torch.load(self.cache_path, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 - a damaged cache file fails in many ways; rebuilding fixes them all
            return None
        if not isinstance(embeddings, torch.Tensor) or embeddings.shape[0] != len(self.phrases):
            return None
        return embeddings.float()

    def _write_cache(self, embeddings: torch.Tensor) -> None:
        write_cache_file(self.cache_path, lambda file: torch.save(embeddings, file))


def _bank_lines(name: str) -> list[str]:
    if name not in BANK_NAMES:
        raise InvalidInputError(f"Unknown phrase bank '{name}'; choose from {', '.join(BANK_NAMES)}.")
    text = resources.files("clip_interrogator").joinpath("data", f"{name}.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def _positions_by_normalized_phrase(phrases: Sequence[str]) -> dict[str, list[int]]:
    positions: dict[str, list[int]] = {}
    for position, phrase in enumerate(phrases):
        positions.setdefault(normalize_phrase(phrase), []).append(position)
    return positions


