"""Batch runs: the ARPO loop over many images, resumable, idempotent and shared by many workers.

Every item goes through the same wiring as `arpo invert` and `arpo resume` (`arpo.graphs.invocation`),
so a batch item is an ordinary run (kind "batch") that can also be browsed and resumed on its own.

An item is keyed by the image's content hash and the run configuration (`item_key`). Running a batch
again skips items whose run finished, continues started ones from their last LangGraph checkpoint, and
retries failed ones; no image gets a second run. The items wait in a queue in the history
(`arpo.storage.batches`), from which workers (`arpo.graphs.batch_worker`) claim them: `concurrency`
threads here, sharing the process's one model stack (its tools serialise their forward passes with
locks) and `--init` inverter, which pays off because brains are remote and I/O-bound; other processes
running the same batch against the same database take their share, and so do Ray workers
(`arpo.graphs.ray_batch`). An item that fails is recorded with its error and the others go on.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel

from arpo.core.errors import InvalidInputError
from arpo.core.run_config import RunConfig
from arpo.graphs.batch_manifest import BatchItem, read_batch_items
from arpo.graphs.batch_worker import (
    DEFAULT_LEASE_S,
    BatchItemResult,
    BatchWorker,
    PlannedItem,
    item_result,
    release_dead_neighbours,
    worker_name,
)
from arpo.graphs.invocation import build_context, shareable_initial_inverter

if TYPE_CHECKING:
    from arpo.agents.brains import Brains
    from arpo.storage.batches import BatchItemState
    from arpo.storage.history import History
    from arpo.tools.model_stack import ModelStack

__all__ = ["BatchItemResult", "BatchReport", "item_key", "plan_batch", "run_batch"]


class BatchReport(BaseModel):
    """Every item of a batch, in the order the folder or manifest lists them."""

    batch_id: str
    source: str
    items: list[BatchItemResult]

    @property
    def finished(self) -> int:
        return sum(item.status == "finished" for item in self.items)

    @property
    def failed(self) -> int:
        return sum(item.status == "failed" for item in self.items)

    @property
    def skipped(self) -> int:
        """Items that had finished before this batch started."""
        return sum(item.skipped for item in self.items)


ItemCallback = Callable[[BatchItemResult], None]
"""Called once per listed item as it ends (from the worker thread that ran it; items that ended
elsewhere, or before, when the batch is done), for progress."""


def item_key(image_identity: str, config: RunConfig) -> str:
    """The key of a batch item: sha256 over the image's identity and the canonical run config JSON."""
    canonical = json.dumps(config.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(f"{image_identity}\n{canonical}".encode()).hexdigest()


def run_batch(
    items: Sequence[BatchItem] | str | Path,
    config: RunConfig,
    *,
    concurrency: int = 1,
    database_url: str | None = None,
    image_root: str | Path | None = None,
    history: History | None = None,
    models: ModelStack | None = None,
    on_item: ItemCallback | None = None,
    on_planned: Callable[[int], None] | None = None,
    lease_s: float = DEFAULT_LEASE_S,
    parallel: int | None = None,
    brains: Brains | None = None,
) -> BatchReport:
    """Recover a prompt for every item, skipping finished ones; returns one result per item.

    `items` is a folder, a JSONL/CSV manifest (see `arpo.graphs.batch_manifest`) or a list of items.
    The history comes from `history`, else `database_url` and `image_root` (opened once the items are
    known to be readable), else arpo's defaults; `models` is a model
    stack to share (built from `config` when not given). Models and brains are checked before any item
    runs, so a missing key or missing weights stop the batch at once (ModelUnavailableError, BrainError).
    `on_planned` hears the number of items before they start. `parallel` K runs K items at once in
    lockstep: their renders and CLIP encodings that come together are one batched forward each, their
    brain calls concurrent. `brains` replaces the brains the config names (a benchmark's in-process
    brain). Workers elsewhere running the same batch
    share its items; this call returns when every item has ended, wherever it ran. KeyboardInterrupt
    stops every item at its next graph node, leaving them resumable.
    """
    from arpo.storage.history import History

    if concurrency < 1:
        raise InvalidInputError(f"concurrency must be at least 1, not {concurrency}")
    if parallel is not None and parallel < 1:
        raise InvalidInputError(f"parallel must be at least 1, not {parallel}")
    source, planned_items = resolve_items(items)
    if history is None:
        history = History.open(database_url, image_root)
    # Builds the brains (and, unless given, the models) once, so a bad setup fails before any row is written.
    shared = build_context(config, history, models, brains=brains)
    batch = plan_batch(history, source, planned_items, config)
    if on_planned is not None:
        on_planned(len(batch.plans))
    inverter = shareable_initial_inverter(config, shared)
    workers = [
        BatchWorker(worker_name(f"thread-{number}"), batch.batch_id, config, history, shared.models, inverter, lease_s,
                    brains=brains)
        for number in range(parallel or concurrency)
    ]
    results = _run_workers(batch, workers, on_item, batched=parallel is not None and parallel > 1)
    return batch.report(results, on_item)


@dataclass
class PlannedBatch:
    """A batch's items as keyed and queued, with what had finished before this run of it began."""

    batch_id: str
    source: str
    plans: list[PlannedItem]
    history: History
    finished_before: set[str]

    @property
    def queued(self) -> dict[str, PlannedItem]:
        """The items workers may claim: one per key (two rows of one image and config are one item)."""
        return {plan.key: plan for plan in self.plans if plan.read_error is None}

    def report(self, results: dict[str, BatchItemResult], on_item: ItemCallback | None = None) -> BatchReport:
        """One result per listed row: what ran here, else what the queue and the run say now."""
        rows = []
        for plan in self.plans:
            result = results.get(plan.key) or self.result_of(plan)
            row = result.model_copy(update={"image": plan.item.label, "ground_truth": plan.item.ground_truth})
            if plan.key not in results and on_item is not None:
                on_item(row)
            rows.append(row)
        return BatchReport(batch_id=self.batch_id, source=self.source, items=rows)

    def result_of(self, plan: PlannedItem) -> BatchItemResult:
        """An item's result as the queue and its run say now (it may have run anywhere)."""
        known = self.history.batches.item(plan.key)
        if known is not None and known.status == "finished" and known.run_id is not None:
            return item_result(plan, self.history.get_run(known.run_id), skipped=plan.key in self.finished_before)
        status = "failed" if known is not None and known.status == "failed" else "interrupted"
        return BatchItemResult(image=plan.item.label, ground_truth=plan.item.ground_truth, key=plan.key, status=status,
                               run_id=known.run_id if known else None, error=known.error if known else None)


def plan_batch(history: History, source: str, items: list[BatchItem], config: RunConfig) -> PlannedBatch:
    """Key the items, open the batch and queue them; an unreadable file is failed at once."""
    plans = [_plan(item, config) for item in items]
    batch_id = _batch_id(source, config)
    store = history.batches
    store.ensure_batch(batch_id, source, config.model_dump(mode="json"), len(plans))
    finished_before = {plan.key for plan in plans if _finished(store.item(plan.key))}
    queued = [(plan.key, plan.item.label) for plan in plans if plan.read_error is None]
    store.enqueue(batch_id, queued)
    release_dead_neighbours(store, [key for key, _ in queued])
    for plan in plans:
        if plan.read_error is not None:
            store.record(plan.key, batch_id=batch_id, image=plan.item.label, status="failed", error=plan.read_error)
    return PlannedBatch(batch_id, source, plans, history, finished_before)


def _finished(known: BatchItemState | None) -> bool:
    return known is not None and known.status == "finished"


def _run_workers(batch: PlannedBatch, workers: list[BatchWorker], on_item: ItemCallback | None, *,
                 batched: bool = False) -> dict[str, BatchItemResult]:
    """Drain the queue with `workers` in threads; results of the items they ran, by key. `batched`:
    the workers' model calls that come together run as one batch (see ModelStack.batched_forwards)."""
    results: dict[str, BatchItemResult] = {}
    lock = threading.Lock()
    rows_by_key: dict[str, list[PlannedItem]] = {}
    for plan in batch.plans:
        rows_by_key.setdefault(plan.key, []).append(plan)

    def ended(result: BatchItemResult) -> None:
        with lock:
            results[result.key] = result
        if on_item is not None:
            for row in rows_by_key[result.key]:
                on_item(result.model_copy(update={"image": row.item.label, "ground_truth": row.item.ground_truth}))

    queued = batch.queued
    draining = [len(workers)]

    def drain(worker: BatchWorker) -> None:
        try:
            worker.drain(queued, ended)
        finally:
            with lock:
                draining[0] -= 1  # a batch no longer waits for a worker that has left

    pool = ThreadPoolExecutor(max_workers=len(workers), thread_name_prefix="arpo-batch")
    together = workers[0].models.batched_forwards(lambda: draining[0]) if batched and workers else contextlib.nullcontext()
    try:
        with together:
            for future in [pool.submit(drain, worker) for worker in workers]:
                future.result()
    except BaseException:
        # Ctrl-C (or a failing callback): in-flight items stop at their next node, no new one starts.
        for worker in workers:
            worker.stop.set()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return results


def resolve_items(items: Sequence[BatchItem] | str | Path) -> tuple[str, list[BatchItem]]:
    """What a batch is called (its folder or manifest, or a digest of a list's labels) and its items."""
    if isinstance(items, (str, Path)):
        return str(Path(items).expanduser().resolve()), read_batch_items(items)
    listed = list(items)
    if not listed:
        raise InvalidInputError("a batch needs at least one image")
    # A list has no path to name it by; its labels identify it (so the same list is the same batch).
    digest = hashlib.sha256("\n".join(item.label for item in listed).encode()).hexdigest()[:12]
    return f"list of {len(listed)} image(s), labels {digest}", listed


def _plan(item: BatchItem, config: RunConfig) -> PlannedItem:
    try:
        content = item.image_path.read_bytes()
    except OSError as error:
        # No content to hash: key the failure by path so a fixed file later gets its own key.
        reason = f"{item.image_path}: cannot read ({error.strerror or error})"
        return PlannedItem(item, item_key(f"unreadable:{item.image_path.resolve()}", config), reason)
    return PlannedItem(item, item_key(hashlib.sha256(content).hexdigest(), config))


def _batch_id(source: str, config: RunConfig) -> str:
    # The same folder or manifest with the same config is the same batch, wherever it is run from.
    return item_key(f"batch:{source}", config)[:12]
