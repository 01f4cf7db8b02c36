"""Writes that need not hold up the loop: one background thread does them, in the order given.

A node of the loop writes its iteration, brain calls and images, then hands over to the next node,
which mostly waits on a brain. Doing those writes on a thread of their own lets them overlap that
wait. Ordering and durability stay as they were because of two rules: writes run one at a time in
submission order, and anything that must see them (a read, a synchronous write, a checkpoint)
settles first, waiting until every write handed over so far is done.

Each write also waits for a quiet moment of the loop (arpo/core/loop_activity.py: typically a brain
wait), at most 50 ms into a busy stretch, so it does not take the interpreter lock from the loop's
own Python; a settle cuts that wait short, since someone is waiting for the write.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from arpo.core.loop_activity import LOOP_ACTIVITY


class WriteBehind:
    """A queue of writes done by one daemon thread, started when the first write is handed over.

    Deferring is per thread: only a thread inside `deferring_writes` queues its writes, each tagged
    with the owner that block names (a run id). A failed write is kept for its owner and raised where
    that owner settles, so among runs sharing one history (`arpo batch --parallel`) a failure fails
    its own run, not whichever run happens to settle next.
    """

    def __init__(self, name: str = "arpo-history-writer") -> None:
        self._name = name
        self._changed = threading.Condition()
        self._queue: deque[tuple[str | None, Callable[[], None]]] = deque()
        self._settling = 0  # threads waiting in `settle`: the writes are wanted now
        self._running = False  # a write has been taken from the queue and is not done yet
        self._failures: dict[str | None, BaseException] = {}
        self._thread: threading.Thread | None = None
        self._here = threading.local()  # this thread's owners, innermost last

    @property
    def deferring(self) -> bool:
        """Whether this thread's writes are queued (inside `deferring_writes`) or done at once."""
        return bool(self._owners())

    @contextmanager
    def deferring_writes(self, owner: str | None = None) -> Iterator[None]:
        """Queue this thread's deferrable writes, as `owner`'s, while inside; leaving waits for them
        (and raises the first of `owner`'s that failed, unless an error is already on its way out)."""
        self._owners().append(owner)
        failed = True
        try:
            yield
            failed = False
        finally:
            self._owners().pop()
            if failed:
                self._settle_quietly(owner)
            else:
                self.settle(owner)

    def write(self, write: Callable[[], None]) -> None:
        """Queue `write` while this thread defers; otherwise settle earlier writes and do it now."""
        owners = self._owners()
        if not owners:
            self.settle()
            write()
            return
        with self._changed:
            self._queue.append((owners[-1], write))
            self._start_thread()
            self._changed.notify_all()

    def settle(self, owner: str | None = None) -> None:
        """Wait until every queued write is done; raise the first failure since the last settle that
        belongs to `owner` (by default this thread's innermost owner), or to no owner."""
        if threading.current_thread() is self._thread:
            raise RuntimeError("a deferred write must not wait for the writes queued behind it")
        owners = self._owners()
        wanted = owner if owner is not None else (owners[-1] if owners else None)
        with self._changed:
            self._settling += 1
        LOOP_ACTIVITY.nudge()
        try:
            with self._changed:
                self._changed.wait_for(lambda: not self._queue and not self._running)
                failure = self._failures.pop(wanted, None) or self._failures.pop(None, None)
        finally:
            with self._changed:
                self._settling -= 1
        if failure is not None:
            raise failure

    def _owners(self) -> list[str | None]:
        owners = getattr(self._here, "owners", None)
        if owners is None:
            owners = self._here.owners = []
        return owners

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

    def _settle_quietly(self, owner: str | None) -> None:
        try:
            self.settle(owner)
        except Exception:  # noqa: BLE001 - the error already leaving the block is the one to report
            pass

    def _start_thread(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name=self._name, daemon=True)
            self._thread.start()

    def _wanted_now(self) -> bool:
        """Whether someone waits for the writes (a settle, or the writer closing)."""
        return self._settling > 0 or self._thread is None

    def _work(self) -> None:
        me = threading.current_thread()
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._queue or self._thread is not me)
                if not self._queue:
                    return
                owner, write = self._queue.popleft()
                self._running = True
            try:
                LOOP_ACTIVITY.wait_until_quiet(unless=self._wanted_now)
                write()
            except BaseException as failure:  # noqa: BLE001 - kept, and raised where its owner settles
                with self._changed:
                    self._failures.setdefault(owner, failure)
            finally:
                with self._changed:
                    self._running = False
                    self._changed.notify_all()
