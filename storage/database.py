"""Opening the history database: one engine per URL, SQLite tuned for several writers, tables created."""

import json
from typing import Any

from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.engine import URL
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError
from sqlalchemy.pool import StaticPool

import arpo.storage.batches  # noqa: F401  (registers its tables)
import arpo.storage.evaluations  # noqa: F401  (registers its tables)
from arpo.core.errors import ArpoError, InvalidInputError
from arpo.storage.locations import sqlite_file_of
from arpo.storage.schema import upgrade_schema

# How long a SQLite writer waits for another process's lock before giving up. LangGraph checkpoints,
# a batch run and a browsing CLI may all touch the same files at once.
SQLITE_BUSY_TIMEOUT_MS = 30_000


def create_database_engine(url: str) -> Engine:
    """Open (and if needed create) the history database at a SQLAlchemy URL, migrated to this arpo's schema.

    SQLite files get their folder created, write-ahead logging, a 30 s busy timeout and foreign keys
    switched on for every connection. Raises InvalidInputError for a URL that cannot be used.
    """
    parsed = _parse_url(url)
    engine = _build_engine(parsed)
    if parsed.get_backend_name() == "sqlite":
        event.listen(engine, "connect", _tune_sqlite_connection)
        event.listen(engine, "begin", _begin_immediately)
    try:
        upgrade_schema(engine)
    except OperationalError as exc:
        engine.dispose()
        raise ArpoError(f"cannot open database {_shown(parsed)}: {exc.orig}") from exc
    return engine


def _parse_url(url: str) -> URL:
    try:
        return make_url(url)
    except (ArgumentError, TypeError, ValueError):
        raise InvalidInputError(f"cannot parse database URL {url!r}") from None


def _build_engine(url: URL) -> Engine:
    options: dict[str, Any] = {"json_serializer": _dump_json}
    if url.get_backend_name() == "sqlite":
        history_file = sqlite_file_of(url)
        if history_file is None:
            # One shared connection, so every session and thread sees the same in-memory database.
            options.update(poolclass=StaticPool, connect_args={"check_same_thread": False})
        else:
            try:
                history_file.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise InvalidInputError(
                    f"cannot create the folder for database {history_file}: {exc.strerror or exc}"
                ) from None
    try:
        return create_engine(url, **options)
    except NoSuchModuleError:
        raise InvalidInputError(
            f"unknown database type {url.drivername!r} in URL {_shown(url)}"
        ) from None
    except ImportError as exc:
        extra = ' (pip install "arpo[postgres]")' if url.get_backend_name() == "postgresql" else ""
        raise InvalidInputError(
            f"the database driver for {_shown(url)} is not installed ({exc.name or exc}){extra}"
        ) from None


def _tune_sqlite_connection(dbapi_connection: Any, _connection_record: Any) -> None:
    # SQLAlchemy, not the sqlite3 module, begins transactions (see _begin_immediately).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        # Commits survive a killed process without waiting for the disk (see graphs/checkpoints.py).
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
    finally:
        cursor.close()


def _begin_immediately(connection: Any) -> None:
    """Every transaction takes SQLite's write lock as it begins, waiting up to the busy timeout for it.

    A transaction that reads first and writes later (look a row up, then change it) cannot wait for
    the lock once another writer has committed since its read: SQLite fails it at once with "database
    is locked". Several threads and processes write one history (batch workers, their heartbeats), so
    each transaction asks for the lock up front instead; readers of the WAL are not blocked by it."""
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def _dump_json(value: Any) -> str:
    # Sorted keys make stored configs easy to compare by eye and by diff.
    return json.dumps(value, sort_keys=True)


def _shown(url: URL) -> str:
    """The URL as it may appear in a message: never with its password."""
    return url.render_as_string(hide_password=True)
