"""A history written by an older arpo (before a nullable column existed) still opens and gains it."""

import sqlite3

from arpo.storage.database import create_database_engine


def test_opening_an_older_history_adds_the_missing_nullable_columns(tmp_path):
    path = tmp_path / "old.db"
    create_database_engine(f"sqlite:///{path}").dispose()
    with sqlite3.connect(path) as db:
        db.execute("ALTER TABLE iterations DROP COLUMN proposal")
        assert "proposal" not in {row[1] for row in db.execute("PRAGMA table_info(iterations)")}

    create_database_engine(f"sqlite:///{path}").dispose()

    with sqlite3.connect(path) as db:
        assert "proposal" in {row[1] for row in db.execute("PRAGMA table_info(iterations)")}
