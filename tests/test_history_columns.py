"""Histories made by earlier releases open, keep every run, and gain the schema this arpo reads:
migrations (Alembic) on open, and for a database from before migrations, its missing columns first."""

import sqlite3

from alembic import command
from sqlalchemy import create_engine, inspect

from arpo.storage.database import create_database_engine
from arpo.storage.history import History
from arpo.storage.models import Base
from arpo.storage.schema import BASELINE_REVISION, alembic_config, head_revision


def made_by_release_0_1(url: str) -> None:
    """What arpo 0.1 left: its tables (the baseline revision) and no migration bookkeeping."""
    engine = create_engine(url)
    with engine.begin() as connection:
        command.upgrade(alembic_config(connection), BASELINE_REVISION)
        connection.exec_driver_sql("DROP TABLE alembic_version")
    engine.dispose()


def test_a_history_from_before_migrations_gains_its_missing_columns_and_the_baseline(tmp_path):
    path = tmp_path / "old.db"
    made_by_release_0_1(f"sqlite:///{path}")
    with sqlite3.connect(path) as db:
        db.execute("ALTER TABLE iterations DROP COLUMN proposal")  # a column an even older build lacked

    create_database_engine(f"sqlite:///{path}").dispose()

    with sqlite3.connect(path) as db:
        assert "proposal" in {row[1] for row in db.execute("PRAGMA table_info(iterations)")}
        assert db.execute("SELECT version_num FROM alembic_version").fetchall() == [(head_revision(),)]


def test_a_run_stored_before_migrations_is_still_there_after_the_upgrade(tmp_path):
    path = tmp_path / "old.db"
    made_by_release_0_1(f"sqlite:///{path}")
    with sqlite3.connect(path) as db:
        db.execute("INSERT INTO images (sha256, relative_path, width, height, format, role, created_at) "
                   "VALUES (?, 'ab/x.png', 8, 8, 'PNG', 'reference', '2026-11-30 10:00:00')", ("ab" * 32,))
        db.execute("INSERT INTO runs (id, created_at, updated_at, status, kind, reference_sha256, reference_name, "
                   "config, best_prompt) VALUES ('0123456789ab', '2026-11-30 10:00:00', '2026-11-30 10:05:00', "
                   "'finished', 'invert', ?, 'cat.png', '{}', 'a cat, oil painting')", ("ab" * 32,))

    with History.open(f"sqlite:///{path}", tmp_path / "images") as history:
        [run] = history.list_runs()
        assert (run.id, run.best_prompt, run.status) == ("0123456789ab", "a cat, oil painting", "finished")


def test_a_new_history_is_made_by_the_migrations_and_matches_the_models(tmp_path):
    engine = create_database_engine(f"sqlite:///{tmp_path / 'new.db'}")
    try:
        tables = inspect(engine)
        for table in Base.metadata.sorted_tables:
            assert {column["name"] for column in tables.get_columns(table.name)} == set(table.columns.keys()), table.name
    finally:
        engine.dispose()
