"""Writes that need not hold up the loop: one background thread does them, in the order given.

A node of the loop writes its iteration, brain calls and images, then hands over to the next node,
which mostly waits on a brain. Doing those writes on a thread of their own lets them overlap that
wait. Ordering and durability stay as they were because of two rules: writes run one at a time in
submission order, and anything that must see them (a read, a synchronous write, a checkpoint)
settles first, waiting until every write handed over so far is done.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class WriteBehind:
    """A queue of writes done by one daemon thread, started when the first write is handed over."""

    def __init__(self, name: str = "arpo-history-writer") -> None:
        self._name = name
        self._changed = threading.Condition()
        self._queue: deque[Callable[[], None]] = deque()
        self._running = False  # a write has been taken from the queue and is not done yet
        self._failure: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._deferring = 0

    @property
    def deferring(self) -> bool:
        """Whether writes handed to `write` are queued (inside `deferring_writes`) or done at once."""
        return self._deferring > 0

    @contextmanager
    def deferring_writes(self) -> Iterator[None]:
        """Queue deferrable writes while inside; leaving waits for them (and raises the first that
        failed, unless an error is already on its way out)."""
        with self._changed:
            self._deferring += 1
        failed = True
        try:
            yield
            failed = False
        finally:
            with self._changed:
                self._deferring -= 1
            if failed:
                self._settle_quietly()
            else:
                self.settle()

    def write(self, write: Callable[[], None]) -> None:
        """Queue `write` while deferring; otherwise settle earlier writes and do it now."""
        if not self.deferring:
            self.settle()
            write()
            return
        with self._changed:
            self._queue.append(write)
            self._start_thread()
            self._changed.notify_all()

    def settle(self) -> None:
        """Wait until every queued write is done; raise the first that failed since the last settle."""
        if threading.current_thread() is self._thread:
            raise RuntimeError("a deferred write must not wait for the writes queued behind it")
        with self._changed:
            self._changed.wait_for(lambda: not self._queue and not self._running)
            failure, self._failure = self._failure, None
        if failure is not None:
            raise failure

    def close(self) -> None:
        """Settle, then let the thread end."""
        try:
            self.settle()
        finally:
            with self._changed:
                thread, self._thread = self._thread, None
                self._changed.notify_all()
            if thread is not None:
                thread.join(timeout=5)

    def _settle_quietly(self) -> None:
        try:
            self.settle()
        except Exception:  # noqa: BLE001 - the error already leaving the block is the one to report
            pass

    def _start_thread(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name=self._name, daemon=True)
            self._thread.start()

    def _work(self) -> None:
        me = threading.current_thread()
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._queue or self._thread is not me)
                if not self._queue:
                    return
                write = self._queue.popleft()
                self._running = True
            try:
                write()
            except BaseException as failure:  # noqa: BLE001 - kept, and raised where the writes settle
                with self._changed:
                    self._failure = self._failure or failure
            finally:
                with self._changed:
                    self._running = False
                    self._changed.notify_all()
