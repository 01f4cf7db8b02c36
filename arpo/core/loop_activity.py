"""When the loop's own Python is running, so background persistence can keep out of its way.

A run's history writes and checkpoint saves run on threads of their own. Python runs one thread at a
time, so a write that runs while the loop does its own Python (LangGraph's step, a pipeline call's
set-up, CLIP preprocessing, selection) delays the loop by as long as the write takes. Most of a run is
the loop waiting on a brain, when its thread needs nothing. So a run's stream says it is `busy`, a
brain call says when it is `waiting`, and background work first waits for a quiet moment
(`wait_until_quiet`), though never longer than it is told: work that finds no quiet moment in time
goes ahead, and work someone needs now (`WriteBehind.settle`) stops waiting at once.

What it buys is measured with the loop benchmark (README, Measuring).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

QUIET_WAIT_S = 0.05
"""How far into a busy stretch of the loop background work waits for a quiet moment; after that it
goes ahead. So a checkpoint lands at most this much later than it would have (a killed run redoes at
most the node it belonged to), and a run's end waits for nothing that could have been done earlier."""


class LoopActivity:
    """For one process: which threads are doing the loop's work, and since when the loop has been busy."""

    def __init__(self, patience_s: float = QUIET_WAIT_S) -> None:
        self.patience_s = patience_s
        """How far into a busy stretch `wait_until_quiet` waits."""
        self._changed = threading.Condition()
        self._busy: dict[int, int] = {}  # thread id -> nesting depth of its `busy` blocks
        self._waiting: dict[int, int] = {}  # thread id -> nesting depth of its `waiting` blocks
        self._busy_since = time.monotonic()

    @contextmanager
    def busy(self) -> Iterator[None]:
        """Inside, this thread is doing the loop's work, except while it is `waiting` on a brain."""
        with self._nested(self._busy):
            yield

    @contextmanager
    def waiting(self) -> Iterator[None]:
        """Inside, this thread only waits (on a brain's reply): background work may run."""
        with self._nested(self._waiting):
            yield

    def wait_until_quiet(self, unless: Callable[[], bool] | None = None) -> None:
        """Return once no thread is doing the loop's work, once the loop has been busy for `patience_s`,
        or as soon as `unless()` holds (checked again whenever `nudge` is called)."""
        with self._changed:
            while not (self._quiet() or (unless is not None and unless())):
                left = self._busy_since + self.patience_s - time.monotonic()
                if left <= 0:
                    return
                self._changed.wait(left)

    def nudge(self) -> None:
        """Have waiters check their `unless` again (someone now needs the background work done)."""
        with self._changed:
            self._changed.notify_all()

    def _quiet(self) -> bool:
        return all(thread in self._waiting for thread in self._busy)

    @contextmanager
    def _nested(self, depths: dict[int, int]) -> Iterator[None]:
        me = threading.get_ident()
        with self._changed:
            self._change(depths, me, +1)
        try:
            yield
        finally:
            with self._changed:
                self._change(depths, me, -1)

    def _change(self, depths: dict[int, int], thread: int, step: int) -> None:
        # Waiters are woken only when it becomes quiet: a woken writer that finds the loop busy would
        # take the interpreter lock from it for nothing.
        was_quiet = self._quiet()
        depths[thread] = depths.get(thread, 0) + step
        if not depths[thread]:
            del depths[thread]
        quiet = self._quiet()
        if was_quiet and not quiet:
            self._busy_since = time.monotonic()
        elif quiet and not was_quiet:
            self._changed.notify_all()


LOOP_ACTIVITY = LoopActivity()
"""The process's one account of the loop's activity, shared by run streams, brain waits, the history
writer and the checkpoint saver."""
