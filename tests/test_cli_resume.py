"""A run killed mid-way is finished by `arpo resume` without repeating or duplicating iterations."""

import os
import signal
import sqlite3
import subprocess
import sys
import time

from cli_harness import SAMPLE_IMAGE, run_arpo

from scripted_server import BrainServer, ScriptedBrain


def iteration_rows(db_path):
    with sqlite3.connect(db_path) as db:
        return db.execute(
            "SELECT i.[index], i.prompt, i.generated_sha256, count(c.id) FROM iterations i "
            "LEFT JOIN candidates c ON c.iteration_id = i.id GROUP BY i.id ORDER BY i.[index]"
        ).fetchall()


def iteration_rows_if_ready(db_path):
    try:
        return iteration_rows(db_path)
    except sqlite3.OperationalError:  # the process has not created the tables yet
        return []


def wait_for(condition, timeout_s, process):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"arpo exited early: {process.stderr.read()}")
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError("timed out waiting for the run to make progress")


def test_resume_after_kill_finishes_without_duplicates(capsys, arpo_home):
    db_path = arpo_home / "arpo.db"
    # Slow brains keep the run busy long enough to be killed between finished iterations. Eight phrases a
    # round: the tiny random CLIP must find one that helps, or the run ends after iteration 0.
    with BrainServer(ScriptedBrain(latency_s=0.5, phrases_per_reply=8)) as server:
        command = [
            sys.executable, "-m", "arpo.app.cli", "invert", str(SAMPLE_IMAGE), "--models", "tiny",
            "--brain", "vllm", "--base-url", server.base_url, "--steps", "4",
        ]
        process = subprocess.Popen(command, env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            # Iteration 0 has finished (selection stored its candidates) and iteration 1 is under way.
            wait_for(lambda: len(iteration_rows_if_ready(db_path)) >= 2, 120, process)
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=10)
        before = iteration_rows(db_path)
        with sqlite3.connect(db_path) as db:
            run_id, status = db.execute("SELECT id, status FROM runs").fetchone()
        assert status == "running"  # killed: nothing had the chance to close it

        outcome = run_arpo(capsys, "resume", run_id, "--json")
    assert outcome.exit_code == 0, outcome.stderr
    result = outcome.json()
    after = iteration_rows(db_path)
    indexes = [row[0] for row in after]
    assert indexes == list(range(len(after))), "one row per iteration, none repeated"
    # Iterations that had finished before the kill are kept exactly as they were.
    finished_before = [row for row in before if row[3] > 0]
    assert after[: len(finished_before)] == finished_before
    assert [it["prompt"] for it in result["iterations"]] == [row[1] for row in after]
    with sqlite3.connect(db_path) as db:
        assert db.execute("SELECT status FROM runs").fetchone()[0] == "finished"

    again = run_arpo(capsys, "resume", run_id, "--json")
    assert again.exit_code == 0 and again.json()["iterations"] == result["iterations"]
