"""The loop's history writes done behind it: in order, seen by every later read, settled before each
checkpoint, and a failed one fails the run instead of vanishing."""

from __future__ import annotations

import threading
import time

import pytest
from langgraph.checkpoint.sqlite import SqliteSaver
from PIL import Image

from arpo.graphs.checkpoints import open_checkpointer
from arpo.storage.history import History
from arpo.storage.models import Iteration
from arpo.storage.write_behind import WriteBehind

from test_storage_history import count_rows, iteration


@pytest.fixture
def history(tmp_path):
    opened = History.open(f"sqlite:///{tmp_path}/history.db", tmp_path / "images")
    yield opened
    opened.close()


def test_writes_run_in_order_on_another_thread_and_settle_waits_for_them():
    writer = WriteBehind()
    done: list[tuple[int, str]] = []
    with writer.deferring_writes():
        for index in range(5):
            writer.write(lambda index=index: (time.sleep(0.01), done.append((index, threading.current_thread().name))))
        assert len(done) < 5  # handed over, not waited for
        writer.settle()
        assert [index for index, _ in done] == [0, 1, 2, 3, 4]
    assert {name for _, name in done} == {"arpo-history-writer"}
    writer.close()


def test_outside_the_block_a_write_is_done_at_once_on_the_callers_thread():
    writer = WriteBehind()
    done: list[str] = []
    writer.write(lambda: done.append(threading.current_thread().name))
    assert done == [threading.current_thread().name]


def test_a_failed_write_is_raised_where_the_writes_settle_and_only_once():
    writer = WriteBehind()
    later: list[str] = []
    with pytest.raises(ValueError, match="disk full"):
        with writer.deferring_writes():
            writer.write(lambda: (_ for _ in ()).throw(ValueError("disk full")))
            writer.write(lambda: later.append("after"))
    assert later == ["after"]  # the writes behind the failed one still ran
    writer.settle()  # reported once
    writer.close()


def test_only_the_thread_inside_the_block_defers_its_writes():
    writer = WriteBehind()
    elsewhere: list[str] = []
    with writer.deferring_writes("run-a"):
        other = threading.Thread(target=lambda: writer.write(lambda: elsewhere.append(threading.current_thread().name)),
                                 name="another-thread")
        other.start()
        other.join()
    assert elsewhere == ["another-thread"]  # done at once, on its own thread
    writer.close()


def test_a_failed_write_fails_its_own_run_not_the_run_that_settles_next():
    writer = WriteBehind()
    inside_a, a_may_leave = threading.Event(), threading.Event()
    a_failure: list[BaseException] = []

    def run_a() -> None:
        try:
            with writer.deferring_writes("run-a"):
                writer.write(lambda: (_ for _ in ()).throw(ValueError("run-a's write failed")))
                inside_a.set()
                a_may_leave.wait(5)
        except ValueError as failure:
            a_failure.append(failure)

    thread_a = threading.Thread(target=run_a)
    thread_a.start()
    inside_a.wait(5)
    with writer.deferring_writes("run-b"):
        writer.write(lambda: None)
        writer.settle()  # run-b's checkpoint: run-a's failure is not run-b's
    writer.settle("run-b")
    a_may_leave.set()
    thread_a.join(5)
    assert [str(failure) for failure in a_failure] == ["run-a's write failed"]
    writer.close()


def test_a_deferred_write_cannot_wait_for_the_queue_it_is_in():
    writer = WriteBehind()
    with pytest.raises(RuntimeError, match="must not wait"):
        with writer.deferring_writes():
            writer.write(writer.settle)
    writer.close()


def test_reads_inside_the_block_see_the_writes_handed_over(history):
    reference = history.store_image(Image.new("RGB", (8, 8), (1, 2, 3)), "reference")
    run_id = history.create_run(reference.sha256, "ref.png", {"steps": 1})
    with history.writing_behind():
        generated = history.store_image(Image.new("RGB", (8, 8), (200, 0, 0)), "generated")
        assert history.open_image(generated.sha256).getpixel((0, 0)) == (200, 0, 0)  # from memory
        history.record_iteration(run_id, iteration(0, generated.sha256, ["red"]))
        assert [it.index for it in history.iterations(run_id)] == [0]
        assert history.has_image(generated.sha256)


def test_a_failed_deferred_write_fails_the_block_and_keeps_what_came_before(history):
    reference = history.store_image(Image.new("RGB", (8, 8), (1, 2, 3)), "reference")
    run_id = history.create_run(reference.sha256, "ref.png", {"steps": 1})
    generated = history.store_image(Image.new("RGB", (8, 8), (200, 0, 0)), "generated")
    with pytest.raises(ValueError, match="is not stored"):
        with history.writing_behind():
            history.record_iteration(run_id, iteration(0, generated.sha256, ["red"]))
            history.record_iteration(run_id, iteration(1, "ab" * 32, ["unstored image"]))
    assert [it.index for it in history.iterations(run_id)] == [0]


def test_a_checkpoint_is_saved_only_after_the_writes_before_it(history, monkeypatch):
    reference = history.store_image(Image.new("RGB", (8, 8), (1, 2, 3)), "reference")
    run_id = history.create_run(reference.sha256, "ref.png", {"steps": 1})
    generated = history.store_image(Image.new("RGB", (8, 8), (200, 0, 0)), "generated")
    slow_write = history._record_iteration_now
    monkeypatch.setattr(history, "_record_iteration_now", lambda *args: (time.sleep(0.2), slow_write(*args)))
    rows_when_saved: list[int] = []
    original_put_writes = SqliteSaver.put_writes
    monkeypatch.setattr(SqliteSaver, "put_writes",
                        lambda self, *args, **kwargs: (rows_when_saved.append(count_rows(history, Iteration)),
                                                       original_put_writes(self, *args, **kwargs))[1])
    saver = open_checkpointer(history)
    try:
        with history.writing_behind():
            history.record_iteration(run_id, iteration(0, generated.sha256, ["red"]))
            config = {"configurable": {"thread_id": run_id, "checkpoint_ns": "", "checkpoint_id": "1"}}
            saver.put_writes(config, [("prompt", "a red square")], task_id="task-1")
    finally:
        saver.conn.close()
    assert rows_when_saved == [1]
