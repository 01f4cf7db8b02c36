"""Where arpo keeps files it can rebuild (tokenizer files, phrase and prompt embeddings), and how it
writes them: under $ARPO_HOME/cache, named by what they were made from, replaced atomically."""

import hashlib
import os
import re
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO

from arpo.core.locations import arpo_home


def cache_dir(name: str) -> Path:
    """The cache folder for one kind of rebuildable file, e.g. cache_dir("clip-tokenizer")."""
    return arpo_home() / "cache" / name


def file_safe(name: str, fallback: str) -> str:
    """`name` (a model id, say) as a file-name part; `fallback` when nothing usable is left."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or fallback


def list_hash(items: Sequence[str]) -> str:
    """A short digest of a list of texts, in order: the part of a cache name that changes with them."""
    return hashlib.sha256("\n".join(items).encode("utf-8")).hexdigest()[:16]


def write_cache_file(path: Path, save: Callable[[BinaryIO], None]) -> None:
    """Write `path` through `save(file)` into a temporary file, then rename it into place, so a
    concurrent reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            save(file)
        os.chmod(temporary, 0o644)  # mkstemp makes owner-only files; a cache can be shared
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
