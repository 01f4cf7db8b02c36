"""A T5 tokenizer for the tiny PixArt pipeline, its unigram model trained offline from the phrase banks.

PixArt-α reads prompts through T5's sentencepiece unigram tokenizer (pad, end and unknown markers at
ids 0, 1 and 2, words split after a "▁" word mark, one `</s>` appended). The real 32k-piece model
lives on the hub; here the same kind of model (a unigram language model over pieces, trained the way
sentencepiece trains one) is learned from clip-interrogator's phrase banks in well under a second, so
tiny pipelines split prompts into T5-style pieces, count them against a 120-token window and pad
exactly like the real pipeline. The trained pieces and scores are cached as JSON under
$ARPO_HOME/cache/t5-tokenizer, named by the training phrases and vocabulary size.
"""

import functools
import json
import threading
from collections.abc import Sequence
from pathlib import Path

from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import T5Tokenizer

from arpo.tools.cache_paths import cache_dir as arpo_cache_dir, list_hash, write_cache_file

# Small enough to keep the tiny T5's embedding table small, large enough that common prompt words
# are single pieces (as they are in the real tokenizer).
TINY_VOCAB_SIZE = 4000
# T5's fixed ids: sentencepiece was trained with these three markers first.
SPECIAL_PIECES = ("<pad>", "</s>", "<unk>")
# T5's tokenizer_config says 512; PixArt cuts at its own max_sequence_length (120) when it encodes.
MODEL_MAX_LENGTH = 512
_PHRASES_PER_BANK = 3000

# Trained pieces by file name (vocabulary size and phrase digest): a process trains at most once,
# whichever cache folder it is pointed at.
_pieces: dict[str, list[list]] = {}
_build_lock = threading.Lock()


def offline_t5_tokenizer(cache_dir: Path | None = None, vocab_size: int = TINY_VOCAB_SIZE) -> T5Tokenizer:
    """A T5 tokenizer whose unigram pieces are learned from the phrase banks (cached on disk and per
    process); every call returns a new tokenizer object, so callers may change its settings."""
    folder = Path(cache_dir) if cache_dir is not None else arpo_cache_dir("t5-tokenizer")
    phrases = _training_phrases()
    name = f"unigram-{vocab_size}-{list_hash(phrases)}.json"
    path = folder.expanduser().resolve() / name
    with _build_lock:
        pieces = _pieces.get(name) or _read_pieces(path)
        if pieces is None:
            pieces = train_unigram_pieces(phrases, vocab_size)
        if not path.is_file():
            encoded = json.dumps(pieces, ensure_ascii=False).encode("utf-8")
            write_cache_file(path, lambda file: file.write(encoded))
        _pieces[name] = pieces
    return T5Tokenizer(vocab=[tuple(piece) for piece in pieces], model_max_length=MODEL_MAX_LENGTH)


def train_unigram_pieces(texts: Sequence[str], vocab_size: int) -> list[list]:
    """[piece, log-probability] pairs of a unigram model trained on `texts`, T5's markers first.

    Words are split on whitespace and marked with "▁" the way T5's tokenizer splits them before the
    unigram model sees them, so the learned pieces line up with how T5Tokenizer will use them.
    """
    model = Tokenizer(models.Unigram())
    model.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")]
    )
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size, special_tokens=list(SPECIAL_PIECES), unk_token="<unk>", show_progress=False
    )
    model.train_from_iterator(texts, trainer)
    pieces = json.loads(model.to_str())["model"]["vocab"]
    if [piece for piece, _score in pieces[: len(SPECIAL_PIECES)]] != list(SPECIAL_PIECES):
        raise RuntimeError("the unigram trainer did not put T5's markers at ids 0-2")
    return pieces


@functools.lru_cache(maxsize=1)
def _training_phrases() -> tuple[str, ...]:
    from arpo.tools.phrase_bank import load_phrase_bank

    banks = load_phrase_bank(max_phrases_per_bank=_PHRASES_PER_BANK)
    return tuple(phrase for bank in banks.values() for phrase in bank)


def _read_pieces(path: Path) -> list[list] | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # a damaged cache is rebuilt, not trusted
