"""Where arpo keeps files it can rebuild (tokenizer files, phrase embeddings): under $ARPO_HOME/cache."""

import os
from pathlib import Path

DEFAULT_ARPO_HOME = Path("~/.local/share/arpo")


def arpo_home() -> Path:
    """arpo's data folder: $ARPO_HOME, or ~/.local/share/arpo. Read on every call so tests can move it."""
    configured = os.environ.get("ARPO_HOME")
    return Path(configured).expanduser() if configured else DEFAULT_ARPO_HOME.expanduser()


def cache_dir(name: str) -> Path:
    """The cache folder for one kind of rebuildable file, e.g. cache_dir("clip-tokenizer")."""
    return arpo_home() / "cache" / name
