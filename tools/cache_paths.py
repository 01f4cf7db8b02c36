"""Where arpo keeps files it can rebuild (tokenizer files, phrase embeddings): under $ARPO_HOME/cache."""

from pathlib import Path

from arpo.storage.locations import arpo_home


def cache_dir(name: str) -> Path:
    """The cache folder for one kind of rebuildable file, e.g. cache_dir("clip-tokenizer")."""
    return arpo_home() / "cache" / name
