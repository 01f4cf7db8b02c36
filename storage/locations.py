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


def default_image_root(database_url: str | URL | None = None) -> Path:
    """Folder of the content-addressed image store used when none is configured: beside a SQLite
    database file (so copying its folder moves both), `$ARPO_HOME/images` for any other database.

    arpo 0.1 kept every history's images in `$ARPO_HOME/images`; a SQLite history it made elsewhere
    (with no images folder beside it) keeps finding them there.
    """
    shared = arpo_home() / IMAGE_FOLDER_NAME
    history_file = sqlite_file_of(database_url) if database_url is not None else None
    if history_file is None:
        return shared
    beside = history_file.parent / IMAGE_FOLDER_NAME
    made_by_0_1 = history_file.exists() and not beside.exists() and shared.exists()
    return shared if made_by_0_1 else beside


def postgres_conninfo_of(database_url: str | URL) -> str | None:
    """The libpq connection string of a PostgreSQL URL (LangGraph's saver connects with psycopg
    directly), or None for any other database."""
    url = _parsed(database_url)
    if url.get_backend_name() != "postgresql":
        return None
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def sqlite_file_of(database_url: str | URL) -> Path | None:
    """The file behind a SQLite URL, or None for an in-memory or non-SQLite database."""
    url = _parsed(database_url)
    if url.get_backend_name() != "sqlite" or (url.database or "") in _IN_MEMORY_SQLITE:
        return None
    return Path(url.database).expanduser()


def checkpoint_path_for(database_url: str | URL) -> Path:
    """Where LangGraph checkpoints go for a given history database.

    A SQLite history gets a sibling file (`arpo.db` -> `arpo.checkpoints.sqlite`) so that copying one
    folder moves both; an in-memory one uses `<home>/checkpoints.sqlite`. (A PostgreSQL history keeps
    its checkpoints in its own database: see `postgres_conninfo_of`.)
    """
    history_file = sqlite_file_of(database_url)
    if history_file is None:
        return arpo_home() / CHECKPOINT_FILE_NAME
    return history_file.with_name(f"{history_file.stem}.{CHECKPOINT_FILE_NAME}")


def _parsed(database_url: str | URL) -> URL:
    try:
        return make_url(database_url)
    except ArgumentError:
        raise InvalidInputError(f"cannot parse database URL {database_url!r}") from None
