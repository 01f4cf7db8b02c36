"""Phrase banks (clip-interrogator's mediums, movements, flavors, artists) and a CLIP index over them.

The offline proposer draws candidate phrases from these banks; `PhraseIndex` embeds a bank once
(cached on disk per scorer and phrase list) and returns the phrases closest to an image.
"""

import hashlib
import threading
import weakref
from collections.abc import Iterable, Sequence
from importlib import resources
from pathlib import Path

import torch

from arpo.core.errors import InvalidInputError
from arpo.core.phrases import phrase_key
from arpo.tools.cache_paths import cache_dir as arpo_cache_dir
from arpo.tools.cache_paths import file_safe, list_hash, write_cache_file
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


class PhraseIndex:
    """CLIP text embeddings of a fixed phrase list, searchable by image embedding.

    The phrases are embedded once, in large batches; the tensor is cached on disk under a key made of
    the scorer's name, a digest of its weights and a hash of the phrase list, so the next run (or
    process) loads it instead. The weights digest keeps apart models a name does not tell apart: tiny
    or random-weight models, another dtype, a checkpoint retrained at the same path. Concurrent runs
    may both embed a new bank, but each replaces the file atomically, so a reader never sees half.
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
        self.phrases = _distinct_phrases(phrases)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else arpo_cache_dir("phrase-embeddings")
        self.cache_path = self.cache_dir / _cache_name(scorer, self.phrases)
        self.embeddings = self._load_or_embed(batch_size)
        self._positions_by_phrase = _positions_by_phrase_key(self.phrases)

    def __len__(self) -> int:
        return len(self.phrases)

    def top_k(
        self, image_embedding: torch.Tensor, k: int, exclude: Iterable[str] = frozenset()
    ) -> list[tuple[str, float]]:
        """The `k` phrases most similar to the image, best first, as (phrase, cosine similarity).

        Phrases in `exclude` are skipped (compared under `phrase_key`, as the loop compares phrases).
        """
        if k <= 0 or not self.phrases:
            return []
        reference = torch.as_tensor(image_embedding, dtype=torch.float32).flatten()
        reference = reference / reference.norm().clamp_min(1e-12)
        scores = self.embeddings @ reference
        for excluded in exclude:
            for position in self._positions_by_phrase.get(phrase_key(excluded), ()):
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


_shared_lock = threading.Lock()


def shared_phrase_index(scorer: ClipScorer, phrases: Sequence[str], cache_dir: Path | None = None) -> PhraseIndex:
    """The process's one `PhraseIndex` of `phrases` for `scorer`: built (or read from disk) on first
    use, then the same object for every run, batch item or evaluation method that asks again.

    Kept on the scorer object, so the indexes live exactly as long as the model they were made with.
    Building happens under a lock: concurrent batch items wait for one index instead of each loading
    (or embedding) it.
    """
    with _shared_lock:
        indexes: dict[Path, PhraseIndex] = scorer.__dict__.setdefault("_shared_phrase_indexes", {})
        # The cache path names the model and the phrase list, which is what makes two indexes the same.
        folder = Path(cache_dir) if cache_dir is not None else arpo_cache_dir("phrase-embeddings")
        key = folder / _cache_name(scorer, _distinct_phrases(phrases))
        if key not in indexes:
            indexes[key] = PhraseIndex(scorer, phrases, folder)
        return indexes[key]


# Values read from each weight tensor for the digest: enough that any retraining changes some of them.
_DIGEST_SAMPLES_PER_TENSOR = 64
_digests: "weakref.WeakKeyDictionary[torch.nn.Module, str]" = weakref.WeakKeyDictionary()


def weights_digest(model: torch.nn.Module) -> str:
    """A short digest of a model's weights: names, shapes, dtypes and evenly spaced values of each
    tensor. Reading samples, not every value, keeps it fast for ViT-L on a CPU; exact bytes, not
    outputs of a forward pass, keep it free of numerical noise. Computed once per model object."""
    known = _digests.get(model)
    if known is not None:
        return known
    digest = hashlib.sha256()
    samples = []
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            flat = tensor.detach().reshape(-1)
            digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
            if flat.numel():
                samples.append(flat[_spaced_positions(flat.numel()).to(flat.device)].to(torch.float64))
        if samples:  # one device-to-host copy for all tensors
            digest.update(torch.cat([s.to(samples[0].device) for s in samples]).cpu().numpy().tobytes())
    _digests[model] = digest.hexdigest()[:12]
    return _digests[model]


def _distinct_phrases(phrases: Iterable[str]) -> list[str]:
    """Stripped, non-empty, first occurrence kept: the list an index embeds."""
    return list(dict.fromkeys(phrase.strip() for phrase in phrases if phrase.strip()))


def _cache_name(scorer: ClipScorer, phrases: Sequence[str]) -> str:
    """The cache file name: the model (name and weights digest) and the phrase list's hash."""
    return f"{file_safe(scorer.name, 'scorer')}-{weights_digest(scorer.model)}-{list_hash(phrases)}.pt"


def _spaced_positions(size: int) -> torch.Tensor:
    """Evenly spaced positions from 0 to size - 1, in integers (float positions round past the end)."""
    count = min(size, _DIGEST_SAMPLES_PER_TENSOR)
    if count == 1:
        return torch.zeros(1, dtype=torch.long)
    return torch.arange(count, dtype=torch.long) * (size - 1) // (count - 1)


def _bank_lines(name: str) -> list[str]:
    if name not in BANK_NAMES:
        raise InvalidInputError(f"Unknown phrase bank '{name}'; choose from {', '.join(BANK_NAMES)}.")
    text = resources.files("clip_interrogator").joinpath("data", f"{name}.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def _positions_by_phrase_key(phrases: Sequence[str]) -> dict[str, list[int]]:
    positions: dict[str, list[int]] = {}
    for position, phrase in enumerate(phrases):
        positions.setdefault(phrase_key(phrase), []).append(position)
    return positions


