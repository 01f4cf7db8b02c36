"""Bringing a history database to the schema this arpo reads: Alembic migrations, applied when a
history is opened, so a database made by an earlier release keeps every run and gains what is new.

A database from before migrations existed (arpo 0.1 created its tables directly) has the tables but
no `alembic_version`: it gets any nullable column an even older release lacked, is stamped with the
baseline revision, and is then upgraded like any other. Two processes opening the same new database
at once take turns (an advisory lock on PostgreSQL, a lock file beside a SQLite file), so neither
sees the other's half-made schema.
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, create_engine, inspect

from arpo.storage.locations import sqlite_file_of
from arpo.storage.models import Base

MIGRATIONS = Path(__file__).with_name("migrations")
BASELINE_REVISION = "0001"
_ADVISORY_LOCK_KEY = 0x61_72_70_6F  # "arpo"


def upgrade_schema(engine: Engine) -> None:
    """Apply every migration the database lacks (one query when it lacks none)."""
    with _one_migrator(engine), engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_ADVISORY_LOCK_KEY})")
        if _current_revision(connection) != head_revision():
            _migrate(connection)


@lru_cache(maxsize=1)
def head_revision() -> str:
    """The newest revision this arpo knows."""
    return ScriptDirectory(str(MIGRATIONS)).get_current_head()


def _migrate(connection: Connection) -> None:
    if _made_before_migrations(connection):
        add_missing_columns(connection)
        command.stamp(alembic_config(connection), BASELINE_REVISION)
    command.upgrade(alembic_config(connection), "head")


def alembic_config(connection: Connection) -> Config:
    """Alembic's configuration for arpo's migrations, run on `connection`."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def _current_revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def _made_before_migrations(connection: Connection) -> bool:
    tables = set(inspect(connection).get_table_names())
    return "runs" in tables and "alembic_version" not in tables


def add_missing_columns(connection: Connection) -> None:
    """Add the nullable columns of the baseline schema to tables an older arpo created without them.

    Before migrations, arpo 0.1 added columns this way at every start; a database last opened by an
    early 0.1 may still lack some, so they are added once more before the baseline is stamped. Only
    columns the baseline has are added (later ones come with their migrations), typed as the models
    type them for this database, and only nullable ones (old rows read back as None).
    """
    baseline = _baseline_columns()
    inspector = inspect(connection)
    existing_tables = set(inspector.get_table_names())
    for table in Base.metadata.sorted_tables:
        if table.name not in existing_tables:
            continue
        present = {column["name"] for column in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name in present or not column.nullable or column.name not in baseline.get(table.name, ()):
                continue
            column_type = column.type.compile(dialect=connection.dialect)
            connection.exec_driver_sql(f'ALTER TABLE "{table.name}" ADD COLUMN "{column.name}" {column_type}')


def _baseline_columns() -> dict[str, set[str]]:
    """Each table's column names at the baseline revision, read off an in-memory database made by it."""
    with create_engine("sqlite://").begin() as scratch:
        command.upgrade(alembic_config(scratch), BASELINE_REVISION)
        inspector = inspect(scratch)
        return {table: {column["name"] for column in inspector.get_columns(table)} for table in inspector.get_table_names()}


@contextmanager
def _one_migrator(engine: Engine) -> Iterator[None]:
    """Hold a lock file beside a SQLite database while migrating (other databases lock themselves)."""
    database_file = sqlite_file_of(engine.url) if engine.url.get_backend_name() == "sqlite" else None
    if database_file is None:
        yield
        return
    database_file.parent.mkdir(parents=True, exist_ok=True)
    with open(database_file.with_name(database_file.name + ".migrating"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
