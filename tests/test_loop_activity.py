"""Background persistence keeps out of the loop's way: it waits for the loop to wait on a brain, but
never past its patience, and never when someone needs the writes now."""

from __future__ import annotations

import threading
import time

import pytest

from arpo.core import loop_activity
from arpo.core.loop_activity import LoopActivity
from arpo.storage.write_behind import WriteBehind


def _returns_within(activity: LoopActivity, seconds: float, unless=None) -> bool:
    """Whether `wait_until_quiet`, run on another thread, returns within `seconds`."""
    returned = threading.Event()
    threading.Thread(target=lambda: (activity.wait_until_quiet(unless), returned.set()), daemon=True).start()
    return returned.wait(seconds)


def test_with_nobody_busy_it_is_quiet_at_once():
    assert _returns_within(LoopActivity(patience_s=60), 5)


def test_a_busy_loop_holds_background_work_until_it_waits_on_a_brain():
    activity = LoopActivity(patience_s=60)
    with activity.busy():
        returned = threading.Event()
        threading.Thread(target=lambda: (activity.wait_until_quiet(), returned.set()), daemon=True).start()
        assert not returned.wait(0.3)
        with activity.waiting():
            assert returned.wait(5)


def test_background_work_goes_ahead_once_the_loop_has_been_busy_for_its_patience():
    activity = LoopActivity(patience_s=0.2)
    with activity.busy():
        started = time.monotonic()
        activity.wait_until_quiet()
        assert 0.1 < time.monotonic() - started < 5


def test_a_nudge_lets_work_go_that_someone_needs_now():
    activity = LoopActivity(patience_s=60)
    needed = threading.Event()
    with activity.busy():
        returned = threading.Event()
        threading.Thread(target=lambda: (activity.wait_until_quiet(needed.is_set), returned.set()), daemon=True).start()
        assert not returned.wait(0.3)
        needed.set()
        activity.nudge()
        assert returned.wait(5)


def test_blocks_nest_and_every_busy_thread_must_be_waiting():
    activity = LoopActivity(patience_s=60)
    other_busy, release = threading.Event(), threading.Event()

    def other_item():
        with activity.busy():
            other_busy.set()
            release.wait(10)

    threading.Thread(target=other_item, daemon=True).start()
    assert other_busy.wait(5)
    with activity.busy(), activity.busy(), activity.waiting():
        assert not _returns_within(activity, 0.3)  # the other thread still does loop work
        release.set()
        assert _returns_within(activity, 5)
    assert _returns_within(activity, 5)


@pytest.fixture
def patient_loop(monkeypatch):
    """The process's loop activity with a patience longer than any test."""
    monkeypatch.setattr(loop_activity.LOOP_ACTIVITY, "patience_s", 60.0)
    return loop_activity.LOOP_ACTIVITY


def test_a_write_handed_over_by_a_busy_loop_runs_during_its_brain_wait(patient_loop):
    writer = WriteBehind()
    done = threading.Event()
    with patient_loop.busy(), writer.deferring_writes():
        writer.write(done.set)
        assert not done.wait(0.3)
        with patient_loop.waiting():
            assert done.wait(5)
    writer.close()


def test_a_settle_does_not_wait_for_a_quiet_moment(patient_loop):
    writer = WriteBehind()
    done: list[str] = []
    with patient_loop.busy(), writer.deferring_writes():
        writer.write(lambda: done.append("written"))
        started = time.monotonic()
        writer.settle()
        assert done == ["written"]
        assert time.monotonic() - started < 5
    writer.close()
