"""Resources kept beside a History (storage/kept_resources.py), such as the checkpoint saver that every
run of the history shares: closing the history leaves it to the runs still using it and closes it
after them, and one that went bad is replaced for the runs after."""

from __future__ import annotations

import sqlite3
import threading
import time

import pytest

from arpo.eval.loop_benchmark import run_once
from arpo.graphs import checkpoints
from arpo.storage.history import History
from arpo.storage.kept_resources import KeptResources
from arpo.tools.model_stack import build_model_stack


class Connection:
    def __init__(self) -> None:
        self.closes = 0
        self.good = True


def close(connection: Connection) -> None:
    connection.closes += 1


def use(kept: KeptResources):
    return kept.use("connection", Connection, close, usable=lambda connection: connection.good)


def test_every_use_shares_one_resource_until_the_close():
    kept = KeptResources()
    with use(kept) as first, use(kept) as second:
        assert first is second
    with use(kept) as later:
        assert later is first and first.closes == 0
    kept.close()
    assert first.closes == 1


def test_closing_waits_for_the_last_user():
    kept = KeptResources()
    with use(kept) as held:
        kept.close()
        assert held.closes == 0, "still in use"
    assert held.closes == 1
    kept.close()
    assert held.closes == 1, "closed once"


def test_a_resource_gone_bad_is_replaced_and_closed_after_its_users():
    kept = KeptResources()
    with use(kept) as old:
        old.good = False
        with use(kept) as new:
            assert new is not old and new.closes == 0
        assert old.closes == 0, "its user still has it"
    assert old.closes == 1
    with use(kept) as again:
        assert again is new


def test_a_use_after_the_close_gets_a_resource_of_its_own_closed_when_it_ends():
    kept = KeptResources()
    kept.close()
    with use(kept) as late:
        assert late.closes == 0
    assert late.closes == 1
    with use(kept) as later:
        assert later is not late


def test_a_replacement_that_cannot_be_opened_leaves_no_bad_resource_behind():
    kept = KeptResources()
    with use(kept) as old:
        old.good = False
        with pytest.raises(ConnectionError):
            with kept.use("connection", _refused, close, usable=lambda connection: connection.good):
                pass
        assert old.closes == 0, "its user still has it"
    assert old.closes == 1
    old.good = True  # a check can still pass on a connection that is about to close
    with use(kept) as next_one:
        assert next_one is not old, "the retired one is never handed out again"


def _refused() -> Connection:
    raise ConnectionError("the server refuses connections")


def test_a_failure_to_close_reaches_neither_the_user_nor_the_counts(caplog):
    def fails(_connection: Connection) -> None:
        raise RuntimeError("cannot start new thread")

    kept = KeptResources()
    with kept.use("connection", Connection, fails) as first:
        kept.close()
    with pytest.raises(ValueError, match="the run's own"):
        with kept.use("connection", Connection, fails):
            raise ValueError("the run's own error")
    assert "could not close" in caplog.text
    with use(kept) as fresh:
        assert fresh is not first


def test_a_slow_check_holds_up_only_the_use_that_makes_it():
    kept = KeptResources()
    checking, answer = threading.Event(), threading.Event()

    def slow_check(connection: Connection) -> bool:
        checking.set()
        answer.wait(10)
        return True

    def use_with_slow_check() -> None:
        with kept.use("connection", Connection, close, usable=slow_check):
            pass

    with use(kept) as held:
        checker = threading.Thread(target=use_with_slow_check)
        checker.start()
        assert checking.wait(10)
        leaving = time.monotonic()
    left_after = time.monotonic() - leaving
    answer.set()
    checker.join(10)
    assert left_after < 2, "leaving waited for another use's check of its server"
    assert held.closes == 0


def test_a_saver_is_closed_only_once_no_save_holds_its_lock(tmp_path):
    saver = checkpoints.sqlite_saver(tmp_path / "checkpoints.sqlite")
    with saver.lock:  # as a save in flight on another thread holds it
        checkpoints.close_soon(saver)
        time.sleep(0.2)
        saver.conn.execute("SELECT 1")  # still open under the save
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with saver.lock:  # as every save does: a close never runs beside it
                saver.conn.execute("SELECT 1")
        except sqlite3.ProgrammingError:
            break
        time.sleep(0.01)
    else:
        pytest.fail("the saver was not closed once its lock was free")


@pytest.fixture(scope="module")
def tiny_models():
    return build_model_stack("tiny")


def _checkpoints_of_the_run(path) -> int:
    with sqlite3.connect(path) as connection:
        try:
            return connection.execute("SELECT count(*) FROM checkpoints").fetchone()[0]
        except sqlite3.OperationalError:  # the saver has not made its tables yet
            return 0


def test_a_history_closed_while_a_run_streams_lets_the_run_finish(tmp_path, arpo_home, tiny_models, monkeypatch):
    history = History.open(f"sqlite:///{tmp_path}/history.db", tmp_path / "images")
    checkpoint_file = history.checkpoint_path
    counted_at_close: list[int] = []
    real_close = checkpoints.close_soon
    monkeypatch.setattr(checkpoints, "close_soon", lambda saver: (
        counted_at_close.append(_checkpoints_of_the_run(checkpoint_file)), real_close(saver)))
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["timings"] = run_once("vanilla", 0.2, 2, tiny_models, history)
        except BaseException as failure:  # noqa: BLE001 - reported by the assertion below
            outcome["failure"] = failure

    runner = threading.Thread(target=run)
    runner.start()
    deadline = time.monotonic() + 60
    while _checkpoints_of_the_run(checkpoint_file) == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert runner.is_alive(), "the run is still streaming when the history closes"
    history.close()
    runner.join(timeout=120)
    assert "failure" not in outcome, outcome.get("failure")
    with History.open(f"sqlite:///{tmp_path}/history.db", tmp_path / "images") as again:
        (finished,) = again.list_runs()
        assert finished.status == "finished"
    assert counted_at_close == [_checkpoints_of_the_run(checkpoint_file)], "closed once, after the run's last save"
