"""A shared history in PostgreSQL, against a real server (tests/postgres_server.py starts one):
runs, LangGraph checkpoints, sessions, evaluations and migrations all live in that one database,
and images in the image store `--images` names."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time

import psycopg
import pytest
from cli_harness import SAMPLE_IMAGE, run_arpo
from test_cli_resume import wait_for

from arpo.storage.history import History
from arpo.storage.locations import postgres_conninfo_of
from arpo.storage.schema import head_revision

TINY = ("--models", "tiny")


def _rows(url: str, query: str, *params) -> list[tuple]:
    with psycopg.connect(postgres_conninfo_of(url)) as connection:
        return connection.execute(query, params).fetchall()


def _tables(url: str) -> set[str]:
    return {name for (name,) in _rows(url, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}


def test_a_run_keeps_history_checkpoints_and_relative_image_paths_in_postgres(capsys, postgres_url, tmp_path):
    images = tmp_path / "shared-images"
    outcome = run_arpo(capsys, "invert", SAMPLE_IMAGE, *TINY, "--brain", "offline", "--steps", "2",
                       "--db", postgres_url, "--images", images, "--json")
    assert outcome.exit_code == 0, outcome.stderr
    run_id = outcome.json()["run_id"]
    assert {"runs", "iterations", "candidates", "checkpoints", "checkpoint_writes", "alembic_version"} <= _tables(postgres_url)
    assert _rows(postgres_url, "SELECT count(*) FROM checkpoints WHERE thread_id = %s", run_id)[0][0] > 0
    assert _rows(postgres_url, "SELECT version_num FROM alembic_version") == [(head_revision(),)]
    stored = _rows(postgres_url, "SELECT relative_path FROM images")
    assert stored and all(not path.startswith("/") and (images / path).is_file() for (path,) in stored)
    # Reasons as long as "past the scorer's 77-token window" fit (the column was 32 characters once).
    assert _rows(postgres_url, "SELECT character_maximum_length FROM information_schema.columns "
                               "WHERE table_name = 'candidates' AND column_name = 'reason'") == [(64,)]

    listed = run_arpo(capsys, "history", "--db", postgres_url, "--images", images, "--json")
    assert [run["id"] for run in listed.json()] == [run_id]
    assert not (tmp_path / "arpo-home" / "checkpoints.sqlite").exists()  # nothing went to a local file


def _iterations(url: str) -> list[tuple]:
    return _rows(url, "SELECT i.index, i.prompt, i.generated_sha256, count(c.id) FROM iterations i "
                      "LEFT JOIN candidates c ON c.iteration_id = i.id GROUP BY i.id ORDER BY i.index")


def test_a_run_killed_with_sigkill_resumes_from_its_postgres_checkpoint(capsys, postgres_url, tmp_path):
    from scripted_server import BrainServer, ScriptedBrain

    common = ("--db", postgres_url, "--images", str(tmp_path / "images"))
    with BrainServer(ScriptedBrain(latency_s=0.5, phrases_per_reply=8)) as server:
        command = [sys.executable, "-m", "arpo.app.cli", "invert", str(SAMPLE_IMAGE), *TINY, "--brain", "vllm",
                   "--base-url", server.base_url, "--steps", "4", *common]
        process = subprocess.Popen(command, env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            wait_for(lambda: len(_iterations(postgres_url)) >= 2 if "iterations" in _tables(postgres_url) else False,
                      180, process)
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=10)
        before = _iterations(postgres_url)
        [(run_id, status)] = _rows(postgres_url, "SELECT id, status FROM runs")
        assert status == "running"

        outcome = run_arpo(capsys, "resume", run_id, *common, "--json")
    assert outcome.exit_code == 0, outcome.stderr
    after = _iterations(postgres_url)
    assert [row[0] for row in after] == list(range(len(after))), "one row per iteration, none repeated"
    finished_before = [row for row in before if row[3] > 0]
    assert after[: len(finished_before)] == finished_before
    assert _rows(postgres_url, "SELECT status FROM runs") == [("finished",)]


def test_a_session_started_in_one_process_is_continued_in_another(capsys, monkeypatch, postgres_url, tmp_path):
    common = ["--db", postgres_url, "--images", str(tmp_path / "images")]
    started = subprocess.run(
        [sys.executable, "-m", "arpo.app.cli", "session", str(SAMPLE_IMAGE), *TINY, "--brain", "offline",
         "--init-prompt", "a cat", *common],
        input="edit a cat on a mat\n", capture_output=True, text=True, timeout=300, env=dict(os.environ),
    )
    assert started.returncode == 0, started.stderr
    run_id = started.stdout.split("left session ")[1].split(";")[0]

    monkeypatch.setattr("sys.stdin", io.StringIO("pin red sofa\nstop\n"))
    later = run_arpo(capsys, "session", "--resume", run_id, *common)
    assert later.exit_code == 0, later.stderr
    assert "prompt: a cat on a mat, red sofa" in later.stdout
    with History.open(postgres_url, tmp_path / "images") as history:
        assert [turn.action for turn in history.session_turns(run_id)] == ["edit", "pin", "stop"]
        assert history.get_run(run_id).status == "finished"


def test_an_evaluation_is_kept_in_postgres_and_continued_there(capsys, postgres_url, tmp_path):
    folder = tmp_path / "refs"
    folder.mkdir()
    from PIL import Image

    Image.open(SAMPLE_IMAGE).convert("RGB").resize((64, 64)).save(folder / "cat.png")
    args = ("eval", folder, *TINY, "--methods", "caption", "--seeds", "1", "--metrics", "clip_t,clip_i",
            "--db", postgres_url, "--images", tmp_path / "images", "--out", tmp_path / "out", "--json")
    first = run_arpo(capsys, *args)
    assert first.exit_code == 0, first.stderr
    assert _rows(postgres_url, "SELECT count(*) FROM evaluation_cells WHERE status = 'done'") == [(1,)]
    again = run_arpo(capsys, *args)
    assert again.exit_code == 0 and again.json() == first.json()
    assert _rows(postgres_url, "SELECT count(*) FROM evaluations") == [(1,)]


def test_a_database_made_before_migrations_is_upgraded_in_place(postgres_url, tmp_path):
    from sqlalchemy import create_engine
    from test_history_columns import made_by_release_0_1

    made_by_release_0_1(postgres_url)
    legacy = create_engine(postgres_url)
    with legacy.begin() as connection:
        connection.exec_driver_sql("ALTER TABLE iterations DROP COLUMN proposal")  # an even older build
        connection.exec_driver_sql(
            "INSERT INTO images VALUES (%s, 'ab/x.png', 8, 8, 'PNG', 'reference', now(), NULL)", ("ab" * 32,))
        connection.exec_driver_sql(
            "INSERT INTO runs (id, created_at, updated_at, status, kind, reference_sha256, reference_name, config, "
            "best_prompt) VALUES ('0123456789ab', now(), now(), 'finished', 'invert', %s, 'cat.png', '{}', 'a cat')",
            ("ab" * 32,))
    legacy.dispose()

    with History.open(postgres_url, tmp_path / "images") as history:
        [run] = history.list_runs()
        assert (run.id, run.best_prompt) == ("0123456789ab", "a cat")
    assert _rows(postgres_url, "SELECT version_num FROM alembic_version") == [(head_revision(),)]
    assert ("proposal",) in _rows(postgres_url, "SELECT column_name FROM information_schema.columns WHERE table_name = 'iterations'")
    assert ("claimed_by",) in _rows(postgres_url, "SELECT column_name FROM information_schema.columns WHERE table_name = 'batch_items'")


@pytest.mark.parametrize("url", ["postgresql+nosuchdriver://arpo@127.0.0.1/arpo"])
def test_an_unknown_postgres_driver_is_one_line(capsys, url):
    outcome = run_arpo(capsys, "history", "--db", url)
    assert outcome.exit_code == 2 and outcome.stderr.count("\n") == 1, outcome.stderr


def test_a_dropped_checkpoint_connection_is_replaced_for_the_runs_after(postgres_url, tmp_path):
    """A long-lived history (`arpo ui`, a long batch) keeps one checkpoint connection; when the server
    drops it (a restart, an idle timeout, a terminated backend), the next run gets a new one instead of
    failing on the dead one like every run after it would."""
    from arpo.graphs.checkpoints import history_checkpointer

    thread = {"configurable": {"thread_id": "no-such-run", "checkpoint_ns": ""}}
    with History.open(postgres_url, tmp_path / "images") as history:
        with history_checkpointer(history) as first:
            assert first.get_tuple(thread) is None
        _rows(postgres_url, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                            "WHERE datname = current_database() AND pid <> pg_backend_pid()")
        with history_checkpointer(history) as second:
            assert second is not first
            assert second.get_tuple(thread) is None
        with history_checkpointer(history) as third:
            assert third is second, "a live connection is kept"
        deadline = time.monotonic() + 10
        while not first.conn.closed and time.monotonic() < deadline:
            time.sleep(0.01)  # closed on a thread of its own
        assert first.conn.closed
