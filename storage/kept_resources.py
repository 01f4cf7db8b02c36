"""Resources another layer keeps beside a History for as long as it is open (the checkpoint saver).

One such resource serves every run of the history, including runs on other threads
(`arpo batch --parallel`, sessions in the web UI). Each run holds it only for one stretch of work
(`use`). This makes three things safe:
- Closing the history never pulls a resource from under a run that is still using it. The resource
  is closed when its last user is done.
- A resource that has gone bad is replaced for later users. A dropped database connection is one
  example: a server restart, a terminated backend, an idle timeout. Users that still hold the old one
  finish with it (or fail with it), and it is closed after them.
- A use after the history closed gets a resource of its own, closed when that use ends, so nothing
  opened then is left open.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

log = logging.getLogger(__name__)

Resource = TypeVar("Resource")


@dataclass
class _Kept(Generic[Resource]):
    resource: Resource
    close_it: Callable[[Resource], None]
    users: int = 0
    retired: bool = False
    """No new user gets it; it is closed once `users` is back to 0."""


class KeptResources:
    """Named resources, each opened on its first use and shared by every use after it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._current: dict[str, _Kept[Any]] = {}
        self._closed = False

    @contextmanager
    def use(
        self,
        name: str,
        open_it: Callable[[], Resource],
        close_it: Callable[[Resource], None],
        usable: Callable[[Resource], bool] | None = None,
    ) -> Iterator[Resource]:
        """The resource kept under `name`, for the length of the block. It is opened now if there is
        none yet, or if `usable` says the kept one can no longer serve."""
        kept = self._usable_lease(name, open_it, close_it, usable)
        try:
            yield kept.resource
        finally:
            self._leave(kept)

    def close(self) -> None:
        """Close every resource nobody is using now; the others close when their last user is done.
        A later `use` gets a resource of its own, closed when it ends."""
        with self._lock:
            self._closed = True
            kept, self._current = list(self._current.values()), {}
            for each in kept:
                each.retired = True
        for each in kept:
            self._close_if_idle(each)

    def _usable_lease(
        self, name: str, open_it: Callable[[], Resource], close_it: Callable[[Resource], None],
        usable: Callable[[Resource], bool] | None,
    ) -> _Kept[Resource]:
        """A lease on the kept resource, or on a new one if `usable` turns the kept one down.

        `usable` runs outside the lock, because it may have to ask a server: a slow answer holds up
        this use only. The lease is already held while it runs, so the resource cannot be closed under
        it.
        """
        kept, opened = self._take(name, open_it, close_it)
        if opened or usable is None:
            return kept
        try:
            good = usable(kept.resource)
        except BaseException:
            self._leave(kept)
            raise
        if good:
            return kept
        self._retire(name, kept)
        self._leave(kept)
        return self._take(name, open_it, close_it)[0]

    def _take(
        self, name: str, open_it: Callable[[], Resource], close_it: Callable[[Resource], None]
    ) -> tuple[_Kept[Resource], bool]:
        """A lease on the current resource, opening one if there is none. It also says whether the
        resource was opened by this call. Opening happens under the lock, so threads that start
        together open one resource, not several."""
        with self._lock:
            kept = self._current.get(name)
            opened = kept is None
            if kept is None:
                kept = _Kept(open_it(), close_it, retired=self._closed)
                if not self._closed:
                    self._current[name] = kept
            kept.users += 1
        return kept, opened

    def _retire(self, name: str, kept: _Kept[Any]) -> None:
        with self._lock:
            kept.retired = True
            if self._current.get(name) is kept:
                del self._current[name]

    def _leave(self, kept: _Kept[Any]) -> None:
        with self._lock:
            kept.users -= 1
        self._close_if_idle(kept)

    def _close_if_idle(self, kept: _Kept[Any]) -> None:
        """Close a retired resource that nobody uses any more. This happens once: `close_it` is taken
        under the lock. A failure to close is logged, not raised. Nobody can act on it, and raising
        it would hide the error of the run leaving, or fail a run that succeeded."""
        with self._lock:
            if not kept.retired or kept.users:
                return
            close_it, kept.close_it = kept.close_it, _closed_already
        try:
            close_it(kept.resource)
        except Exception:  # noqa: BLE001 - see the docstring
            log.warning("could not close a resource kept beside the history", exc_info=True)


def _closed_already(_resource: Any) -> None:
    """What is left of a `close_it` that has been called."""
