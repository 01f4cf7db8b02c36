"""Calls from several threads that arrive together, run as one batched call.

A batch run with `--parallel K` advances K items in K threads; when they reach the same kind of model
call (render a prompt, encode texts, encode images) at about the same time, one forward over all of
their inputs costs little more than one forward over one. A `MicroBatcher` collects the calls: the
batch runs as soon as every participant is waiting in it, or when the first caller has waited
`wait_s` (some participants are elsewhere, waiting for a brain), and each caller gets its own result.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

Request = TypeVar("Request")
Result = TypeVar("Result")

DEFAULT_WAIT_S = 0.25
"""How long the first caller of a batch waits for the others (about one brain reply's latency)."""


@dataclass
class _Slot(Generic[Result]):
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: BaseException | None = None


class MicroBatcher(Generic[Request, Result]):
    """`batcher(request)` returns `run([... request ...])`'s result for it, batched with whoever came
    at the same time; `participants()` says how many threads may take part (the batch need not wait
    once all of them are in it)."""

    def __init__(self, run: Callable[[list[Request]], list[Result]], participants: Callable[[], int], *,
                 wait_s: float = DEFAULT_WAIT_S, max_batch: int | None = None) -> None:
        self._run = run
        self._participants = participants
        self._wait_s = wait_s
        self._max_batch = max_batch
        self._lock = threading.Condition()
        self._pending: list[tuple[Request, _Slot[Result]]] = []
        self.batches: list[int] = []
        """The size of each batch run so far (what the batching bought)."""

    def __call__(self, request: Request) -> Result:
        slot: _Slot[Result] = _Slot()
        with self._lock:
            self._pending.append((request, slot))
            self._lock.notify_all()
            self._lock.wait_for(lambda: slot.done.is_set() or self._full(), timeout=self._wait_s)
            taken = [] if slot.done.is_set() else self._take()
        if taken:
            self._execute(taken)
        slot.done.wait()
        if slot.error is not None:
            raise slot.error
        return slot.result

    def _full(self) -> bool:
        wanted = max(1, min(self._participants(), self._max_batch or self._participants()))
        return len(self._pending) >= wanted

    def _take(self) -> list[tuple[Request, _Slot[Result]]]:
        """The pending calls, up to `max_batch`, taken by the caller that will run them."""
        count = len(self._pending) if self._max_batch is None else min(self._max_batch, len(self._pending))
        taken, self._pending = self._pending[:count], self._pending[count:]
        return taken

    def _execute(self, taken: list[tuple[Request, _Slot[Result]]]) -> None:
        self.batches.append(len(taken))
        try:
            results = self._run([request for request, _ in taken])
        except BaseException as error:  # noqa: BLE001 - every caller of the batch hears of the failure
            for _, slot in taken:
                slot.error = error
                slot.done.set()
        else:
            for (_, slot), result in zip(taken, results, strict=True):
                slot.result = result
                slot.done.set()
        with self._lock:
            self._lock.notify_all()
