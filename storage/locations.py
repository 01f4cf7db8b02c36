"""Where arpo keeps its files: the home folder, the history database, images and checkpoints."""

from pathlib import Path

from sqlalchemy import make_url
from sqlalchemy.engine import URL
from sqlalchemy.exc import ArgumentError

from arpo.core.errors import InvalidInputError
from arpo.core.locations import arpo_home

DATABASE_FILE_NAME = "arpo.db"
IMAGE_FOLDER_NAME = "images"
CHECKPOINT_FILE_NAME = "checkpoints.sqlite"

# SQLite names for a database that lives only in memory; it has no folder to put a sibling file in.
_IN_MEMORY_SQLITE = {"", ":memory:"}


def default_database_url() -> str:
    """SQLAlchemy URL of the history database used when none is configured."""
    return f"sqlite:///{arpo_home() / DATABASE_FILE_NAME}"


def default_image_root() -> Path:
    """Folder of the content-addressed image store used when none is configured."""
    return arpo_home() / IMAGE_FOLDER_NAME


def sqlite_file_of(database_url: str | URL) -> Path | None:
    """The file behind a SQLite URL, or None for an in-memory or non-SQLite database."""
    try:
        url = make_url(database_url)
    except ArgumentError:
        raise InvalidInputError(f"cannot parse database URL {database_url!r}") from None
    if url.get_backend_name() != "sqlite" or (url.database or "") in _IN_MEMORY_SQLITE:
        return None
    return Path(url.database).expanduser()


def checkpoint_path_for(database_url: str | URL) -> Path:
    """Where LangGraph checkpoints go for a given history database.

    A SQLite history gets a sibling file (`arpo.db` -> `arpo.checkpoints.sqlite`) so that copying one
    folder moves both; any other database (an in-memory one, PostgreSQL) uses `<home>/checkpoints.sqlite`.
    """
    history_file = sqlite_file_of(database_url)
    if history_file is None:
        return arpo_home() / CHECKPOINT_FILE_NAME
    return history_file.with_name(f"{history_file.stem}.{CHECKPOINT_FILE_NAME}")
