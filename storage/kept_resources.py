"""Resources another layer keeps beside a History for as long as it is open (the checkpoint saver).

One such resource serves every run of the history, including runs on other threads
(`arpo batch --parallel`, sessions in the web UI). Each run holds it only for one stretch of work
(`use`). This makes two things safe:
- Closing the history never pulls a resource from under a run that is still using it. The resource
  is closed when its last user is done.
- A resource that has gone bad is replaced for later users. A dropped database connection is one
  example: a server restart, a terminated backend, an idle timeout. Users that still hold the old one
  finish with it (or fail with it), and it is closed after them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

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
        kept, unusable = self._take(name, open_it, close_it, usable)
        self._close_if_idle(unusable)
        try:
            yield kept.resource
        finally:
            self._leave(kept)

    def close(self) -> None:
        """Close every resource nobody is using now; the others close when their last user is done.
        A later `use` opens a new one."""
        with self._lock:
            kept, self._current = list(self._current.values()), {}
            for each in kept:
                each.retired = True
        for each in kept:
            self._close_if_idle(each)

    def _take(
        self, name: str, open_it: Callable[[], Resource], close_it: Callable[[Resource], None],
        usable: Callable[[Resource], bool] | None,
    ) -> tuple[_Kept[Resource], _Kept[Resource] | None]:
        # Opening happens under the lock, so threads starting together open one resource, not several.
        unusable = None
        with self._lock:
            kept = self._current.get(name)
            if kept is not None and usable is not None and not usable(kept.resource):
                unusable, kept = kept, None
                unusable.retired = True
            if kept is None:
                kept = self._current[name] = _Kept(open_it(), close_it)
            kept.users += 1
        return kept, unusable

    def _leave(self, kept: _Kept[Any]) -> None:
        with self._lock:
            kept.users -= 1
        self._close_if_idle(kept)

    def _close_if_idle(self, kept: _Kept[Any] | None) -> None:
        """Close a retired resource that nobody uses any more. This happens once: `close_it` is taken
        under the lock."""
        if kept is None:
            return
        with self._lock:
            if not kept.retired or kept.users:
                return
            close_it, kept.close_it = kept.close_it, _closed_already
        close_it(kept.resource)


def _closed_already(_resource: Any) -> None:
    """What is left of a `close_it` that has been called."""
