"""Where the history lives and how its database is opened."""

from pathlib import Path

import pytest
from sqlalchemy import inspect

from arpo.core.errors import ArpoError, InvalidInputError
from arpo.storage import locations
from arpo.storage.database import create_database_engine
from arpo.storage.locations import (
    checkpoint_path_for,
    default_database_url,
    default_image_root,
)


def test_home_comes_from_environment_and_is_created(arpo_home: Path):
    assert not arpo_home.exists()
    assert locations.arpo_home() == arpo_home
    assert arpo_home.is_dir()


def test_home_defaults_to_local_share(tmp_path, monkeypatch):
    monkeypatch.delenv("ARPO_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert locations.arpo_home() == tmp_path / ".local" / "share" / "arpo"
    assert (tmp_path / ".local" / "share" / "arpo").is_dir()


def test_default_locations_sit_in_home(arpo_home: Path):
    assert default_database_url() == f"sqlite:///{arpo_home}/arpo.db"
    assert default_image_root() == arpo_home / "images"


def test_checkpoints_sit_beside_a_sqlite_history(tmp_path):
    url = f"sqlite:///{tmp_path}/runs/history.db"
    assert checkpoint_path_for(url) == tmp_path / "runs" / "history.checkpoints.sqlite"


@pytest.mark.parametrize("url", ["postgresql://arpo@db.example/arpo", "sqlite://", "sqlite:///:memory:"])
def test_checkpoints_of_other_databases_go_to_home(url, arpo_home: Path):
    assert checkpoint_path_for(url) == arpo_home / "checkpoints.sqlite"


def test_engine_creates_folder_and_every_table(tmp_path):
    database_file = tmp_path / "deep" / "folder" / "arpo.db"
    engine = create_database_engine(f"sqlite:///{database_file}")
    try:
        assert database_file.is_file()
        assert set(inspect(engine).get_table_names()) == {
            "alembic_version",
            "runs",
            "iterations",
            "candidates",
            "images",
            "brain_calls",
            "tool_calls",
            "inversion_steps",
            "session_turns",
            "renders",
            "batches",
            "batch_items",
            "evaluations",
            "evaluation_cells",
        }
    finally:
        engine.dispose()


def test_sqlite_connections_use_wal_busy_timeout_and_foreign_keys(tmp_path):
    engine = create_database_engine(f"sqlite:///{tmp_path}/arpo.db")
    try:
        with engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30_000
            assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    finally:
        engine.dispose()


@pytest.mark.parametrize("url", ["not a database url", ""])
def test_unparseable_url_is_refused(url):
    with pytest.raises(InvalidInputError, match="cannot parse database URL"):
        create_database_engine(url)


def test_unknown_database_type_is_refused():
    with pytest.raises(InvalidInputError, match="unknown database type 'nosuchdb'"):
        create_database_engine("nosuchdb://somewhere/history")


def test_database_folder_that_cannot_be_made_is_refused(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(InvalidInputError, match="cannot create the folder"):
        create_database_engine(f"sqlite:///{blocker}/arpo.db")


def test_unopenable_database_is_an_arpo_error(tmp_path):
    (tmp_path / "arpo.db").mkdir()  # a folder where the database file should be
    with pytest.raises(ArpoError, match="cannot open database"):
        create_database_engine(f"sqlite:///{tmp_path}/arpo.db")
