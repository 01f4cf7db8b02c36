"""A real CLIP BPE tokenizer built offline from the vocabulary file open_clip ships.

Stable Diffusion's text encoders use OpenAI CLIP's byte-pair encoding. open_clip packages its merge
list (`bpe_simple_vocab_16e6.txt.gz`); from it we write the `vocab.json` and `merges.txt` that
`transformers.CLIPTokenizer` reads, so tiny pipelines tokenize exactly like the real ones without
touching the hub.
"""

import gzip
import json
import threading
from pathlib import Path

from open_clip.tokenizer import bytes_to_unicode, default_bpe
from transformers import CLIPTokenizer

from arpo.tools.cache_paths import cache_dir as arpo_cache_dir, write_cache_file

CONTEXT_LENGTH = 77
VOCAB_SIZE = 49408
START_TOKEN = "<|startoftext|>"
END_TOKEN = "<|endoftext|>"
# CLIP keeps the first 48894 merges of the file (49152 tokens minus 256 bytes and the 2 markers).
_MERGE_COUNT = VOCAB_SIZE - 2 * 256 - 2

_built: dict[Path, CLIPTokenizer] = {}
_build_lock = threading.Lock()


def offline_clip_tokenizer(cache_dir: Path | None = None) -> CLIPTokenizer:
    """The CLIP tokenizer (49408 tokens, 77 positions), from files written once to `cache_dir`.

    The default folder is $ARPO_HOME/cache/clip-tokenizer. Built tokenizers are kept per folder for
    the life of the process.
    """
    folder = Path(cache_dir) if cache_dir is not None else arpo_cache_dir("clip-tokenizer")
    folder = folder.expanduser().resolve()
    with _build_lock:
        if folder not in _built:
            _write_tokenizer_files(folder)
            _built[folder] = CLIPTokenizer.from_pretrained(str(folder), model_max_length=CONTEXT_LENGTH)
        return _built[folder]


def _write_tokenizer_files(folder: Path) -> None:
    vocab_path, merges_path = folder / "vocab.json", folder / "merges.txt"
    if vocab_path.is_file() and merges_path.is_file():
        return
    merges = _clip_merges()
    write_bpe_files(folder, _clip_vocabulary(merges), merges)


def write_bpe_files(folder: Path, vocabulary: dict[str, int], merges: list[str]) -> None:
    """The `vocab.json` and `merges.txt` a transformers BPE tokenizer (CLIP, GPT-2) reads, written
    atomically into `folder`; `merges` are "left right" lines in merge order."""
    encoded = json.dumps(vocabulary, ensure_ascii=False).encode("utf-8")
    write_cache_file(folder / "vocab.json", lambda file: file.write(encoded))
    # The first line of a merges file is a version header that readers skip.
    merges_text = "#version: 0.2\n" + "\n".join(merges) + "\n"
    write_cache_file(folder / "merges.txt", lambda file: file.write(merges_text.encode("utf-8")))


def _clip_merges() -> list[str]:
    with gzip.open(default_bpe(), "rt", encoding="utf-8") as packaged:
        lines = packaged.read().split("\n")
    # Line 0 of open_clip's file is its own header.
    return lines[1 : _MERGE_COUNT + 1]


def _clip_vocabulary(merges: list[str]) -> dict[str, int]:
    """Token -> id in CLIP's order: 256 byte symbols, the same with end-of-word marks, merges, markers."""
    byte_symbols = list(bytes_to_unicode().values())
    tokens = byte_symbols + [symbol + "</w>" for symbol in byte_symbols]
    tokens += ["".join(merge.split()) for merge in merges]
    tokens += [START_TOKEN, END_TOKEN]
    return {token: index for index, token in enumerate(tokens)}
