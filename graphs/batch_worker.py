"""A batch worker: takes items from the batch's queue in the history, one at a time, and runs each to
its end (new, or continued from its last checkpoint), until no item is left for anyone.

The same worker runs in a thread of `arpo batch` and inside a Ray actor (`arpo.graphs.ray_batch`); the
queue in the database is all they share, so workers in several processes or machines split one batch
without a coordinator. While a worker holds items it heartbeats them, so if it dies, its items are
taken over by another worker once the lease runs out (or at once, when whoever watches it says so).
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel

from arpo.core.errors import ArpoError
from arpo.core.run_config import RunConfig
from arpo.graphs.batch_manifest import BatchItem
from arpo.graphs.invocation import RunHandle, build_context, execute_run, load_run, start_run

if TYPE_CHECKING:
    from arpo.agents.brains import Brains
    from arpo.storage.batches import BatchItemState, BatchStore
    from arpo.storage.history import History
    from arpo.storage.records import RunDetail
    from arpo.tools.inversion.base import PromptInverter
    from arpo.tools.model_stack import ModelStack

BATCH_RUN_KIND = "batch"
DEFAULT_LEASE_S = 60.0
"""How long a claim holds without a heartbeat before the item is taken over (heartbeats come 4x as often)."""
POLL_S = 0.5
"""How often a worker with nothing to claim looks again while other workers still run items."""
ItemStatus = Literal["finished", "failed", "interrupted"]


class BatchItemResult(BaseModel):
    """How one image of a batch ended, with the prompt recovered for it."""

    image: str
    """The image as the batch names it (manifest path or file name)."""
    ground_truth: str | None = None
    """The prompt the manifest says made the image, if it gives one."""
    key: str
    """Content hash of the image combined with the run configuration."""
    status: ItemStatus
    run_id: str | None = None
    error: str | None = None
    """One-line reason when the item failed."""
    skipped: bool = False
    """True when the item had already finished before this batch started (nothing was run)."""
    best_prompt: str | None = None
    """The prompt whose regenerated image was closest to the image (CLIP image-image)."""
    best_clip_i: float | None = None
    best_clip_t: float | None = None
    """CLIP text-image similarity of the best prompt to the image."""
    last_prompt: str | None = None
    iterations: int = 0
    stopped_because: str | None = None


@dataclass(frozen=True)
class PlannedItem:
    """An item with its key, or the reason its file could not even be read."""

    item: BatchItem
    key: str
    read_error: str | None = None


def worker_name(label: str) -> str:
    """A worker's name in the queue: host, process and which worker of the process (`label`)."""
    return f"{socket.gethostname()}:{os.getpid()}:{label}"


def drain_queue(store: BatchStore, keys: list[str], worker: str, run: Callable[[BatchItemState], None], *,
                lease_s: float = DEFAULT_LEASE_S, stop: threading.Event | None = None) -> None:
    """The worker's loop over a queue: claim the next of `keys`, `run` it, again, heartbeating what it
    holds, until none waits and no live worker holds one (or `stop` is set). `run` writes the item's
    outcome; an item it leaves running is handed back when the loop ends."""
    stop = stop or threading.Event()
    with _Heartbeat(store, worker, lease_s / 4):
        try:
            while not stop.is_set():
                claimed = store.claim_next(keys, worker, lease_s)
                if claimed is not None:
                    run(claimed)
                elif store.held_elsewhere(keys, lease_s) and not release_dead_neighbours(store, keys):
                    stop.wait(POLL_S)  # others are at work; one of theirs may come free
                else:
                    return
        finally:
            store.release(worker)


def release_dead_neighbours(store: BatchStore, keys: list[str]) -> list[str]:
    """Hand back the items held by workers of processes on this machine that no longer exist (a
    killed `arpo batch`), so they need not wait out their lease. Returns the keys released."""
    released = []
    for holder in store.holders(keys):
        host, _, rest = holder.partition(":")
        pid = rest.partition(":")[0]
        if host == socket.gethostname() and pid.isdigit() and not _process_alive(int(pid)):
            released += store.release(holder)
    return released


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


@dataclass
class BatchWorker:
    """Runs the items of one batch it claims from the queue; several may share one model stack."""

    name: str
    batch_id: str
    config: RunConfig
    history: History
    models: ModelStack
    initial_inverter: PromptInverter | None = None
    lease_s: float = DEFAULT_LEASE_S
    brains: Brains | None = None
    """Brains to use instead of those the config names (a benchmark's in-process brain)."""
    stop: threading.Event = field(default_factory=threading.Event)
    """Set to stop: no new item is claimed and the one running stops at its next graph node."""

    @property
    def store(self) -> BatchStore:
        return self.history.batches

    def drain(self, plans: dict[str, PlannedItem], on_result: Callable[[BatchItemResult], None]) -> None:
        """Claim and run items among `plans` (by key) until none waits and no live worker holds one."""
        drain_queue(self.store, list(plans), self.name, lambda claimed: on_result(self.run_one(plans[claimed.key], claimed)),
                    lease_s=self.lease_s, stop=self.stop)

    def run_one(self, plan: PlannedItem, claimed: BatchItemState) -> BatchItemResult:
        """Run (or continue) one claimed item; failures become a failed result, never an exception."""
        handle: RunHandle | None = None
        try:
            run_id = claimed.run_id or self._orphaned_run(claimed)
            if run_id is not None:
                handle = load_run(self.history, run_id, self.models, initial_inverter=self.initial_inverter)
            else:
                handle = self._start(plan)
            self._record(plan, "running", handle.run_id)
            execute_run(handle, on_update=self._stop_if_asked)
            detail = self.history.get_run(handle.run_id)
            if detail.status != "finished":
                return self.failed(plan, handle.run_id, f"run {detail.id} ended with status {detail.status}")
            self._record(plan, "finished", handle.run_id)
            return item_result(plan, detail)
        except KeyboardInterrupt:
            # Asked to stop: the run is marked interrupted by execute_run and the item waits again.
            run_id = handle.run_id if handle else None
            self._record(plan, "pending", run_id)
            return BatchItemResult(image=plan.item.label, ground_truth=plan.item.ground_truth, key=plan.key,
                                   status="interrupted", run_id=run_id)
        except ArpoError as error:
            return self.failed(plan, handle.run_id if handle else None, str(error))
        except Exception as error:  # noqa: BLE001 - one broken item must not end the batch
            message = f"{type(error).__name__}: {error}".splitlines()[0]
            if handle is not None:
                self.history.fail_run(handle.run_id, message)
            return self.failed(plan, handle.run_id if handle else None, message)

    def failed(self, plan: PlannedItem, run_id: str | None, message: str) -> BatchItemResult:
        """Record the item as failed (a later batch run retries it) and say so."""
        self._record(plan, "failed", run_id, message)
        return BatchItemResult(image=plan.item.label, ground_truth=plan.item.ground_truth, key=plan.key,
                               status="failed", run_id=run_id, error=message)

    def _start(self, plan: PlannedItem) -> RunHandle:
        from arpo.tools.reference_image import load_reference_image

        reference = load_reference_image(plan.item.image_path)
        reference.name = plan.item.label
        context = build_context(self.config, self.history, self.models, initial_inverter=self.initial_inverter,
                                brains=self.brains)
        # The item row says "running" before the run exists, so a kill in between is found (_orphaned_run).
        self._record(plan, "running", None)
        return start_run(self.history, self.config, reference, context, kind=BATCH_RUN_KIND)

    def _orphaned_run(self, known: BatchItemState) -> str | None:
        """The run a kill left unrecorded between `start_run` and writing its id onto the item, if any."""
        for run_id, stored_config in self.store.unclaimed_runs(known.image, known.updated_at):
            if RunConfig.model_validate(stored_config) == self.config:
                return run_id
        return None

    def _record(self, plan: PlannedItem, status: str, run_id: str | None, error: str | None = None) -> None:
        self.store.record(plan.key, batch_id=self.batch_id, image=plan.item.label, status=status, run_id=run_id,
                          error=error)

    def _stop_if_asked(self, _node: str, _update: dict) -> None:
        if self.stop.is_set():
            raise KeyboardInterrupt


def item_result(plan: PlannedItem, detail: RunDetail, *, skipped: bool = False) -> BatchItemResult:
    """A finished item's result, from its run."""
    iterations = detail.iterations_detail
    # The first iteration with the highest CLIP-I is the one whose prompt the run calls best.
    best = max(iterations, key=lambda record: record.clip_i, default=None)
    return BatchItemResult(
        image=plan.item.label,
        ground_truth=plan.item.ground_truth,
        key=plan.key,
        status="finished",
        run_id=detail.id,
        skipped=skipped,
        best_prompt=detail.best_prompt,
        best_clip_i=detail.best_clip_i,
        best_clip_t=best.clip_t if best is not None else None,
        last_prompt=detail.last_prompt,
        iterations=len(iterations),
        stopped_because=detail.stopped_because,
    )


class _Heartbeat:
    """A thread that keeps a worker's claims alive while the worker runs."""

    def __init__(self, store: BatchStore, worker: str, every_s: float) -> None:
        self._store, self._worker, self._every_s = store, worker, every_s
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"arpo-heartbeat-{worker}", daemon=True)

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *_exc_info: object) -> None:
        self._done.set()
        self._thread.join()

    def _beat(self) -> None:
        while not self._done.wait(self._every_s):
            try:
                self._store.heartbeat(self._worker)
            except Exception:  # noqa: BLE001 - a missed beat only shortens the lease; the next one may land
                continue
