"""Batch runs: the ARPO loop over many images, resumable, idempotent and optionally concurrent.

Every item goes through the same wiring as `arpo invert` and `arpo resume` (`arpo.graphs.invocation`),
so a batch item is an ordinary run (kind "batch") that can also be browsed and resumed on its own.

An item is keyed by the image's content hash and the run configuration (`item_key`). Running a batch
again skips items whose run finished, continues started ones from their last LangGraph checkpoint, and
retries failed ones; no image gets a second run. Items run in threads (`concurrency`), which pays off
because brains are remote and I/O-bound; the one model stack of the process is shared by all items
(its tools serialise their forward passes with locks), and so is the `--init` inverter (a regressor
checkpoint loads once, not per item). An item that fails is recorded with its error and the others go on.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel

from arpo.core.errors import ArpoError, InvalidInputError
from arpo.core.run_config import RunConfig
from arpo.graphs.batch_manifest import BatchItem, read_batch_items
from arpo.graphs.invocation import (
    RunHandle,
    build_context,
    execute_run,
    load_run,
    shareable_initial_inverter,
    start_run,
)

if TYPE_CHECKING:
    from arpo.storage.batches import BatchItemState, BatchStore
    from arpo.storage.history import History
    from arpo.storage.records import RunDetail
    from arpo.tools.inversion.base import PromptInverter
    from arpo.tools.model_stack import ModelStack

BATCH_RUN_KIND = "batch"
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
"""Called once per listed item as it ends, in the thread that called `run_batch` (for progress)."""


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
    history: History | None = None,
    models: ModelStack | None = None,
    on_item: ItemCallback | None = None,
    on_planned: Callable[[int], None] | None = None,
) -> BatchReport:
    """Recover a prompt for every item, skipping finished ones; returns one result per item.

    `items` is a folder, a JSONL/CSV manifest (see `arpo.graphs.batch_manifest`) or a list of items.
    The history comes from `history`, else `database_url`, else arpo's default; `models` is a model
    stack to share (built from `config` when not given). Models and brains are checked before any item
    runs, so a missing key or missing weights stop the batch at once (ModelUnavailableError, BrainError).
    `on_planned` hears the number of items before they start. KeyboardInterrupt stops every item at its
    next graph node, leaving them resumable.
    """
    from arpo.storage.history import History

    if concurrency < 1:
        raise InvalidInputError(f"concurrency must be at least 1, not {concurrency}")
    source, planned_items = _resolve_items(items)
    if history is None:
        history = History.open(database_url)
    # Builds the brains (and, unless given, the models) once, so a bad setup fails before any row is written.
    shared = build_context(config, history, models)
    plans = [_plan(item, config) for item in planned_items]
    batch_id = _batch_id(source, config)
    store = history.batches
    store.ensure_batch(batch_id, source, config.model_dump(mode="json"), len(plans))
    if on_planned is not None:
        on_planned(len(plans))

    runner = _ItemRunner(batch_id, config, history, shared.models, store, shareable_initial_inverter(config, shared))
    results = runner.run_all(plans, concurrency, on_item)
    return BatchReport(batch_id=batch_id, source=source, items=results)


@dataclass(frozen=True)
class _Plan:
    """An item with its key, or the reason its file could not even be read."""

    item: BatchItem
    key: str
    read_error: str | None = None


def _resolve_items(items: Sequence[BatchItem] | str | Path) -> tuple[str, list[BatchItem]]:
    if isinstance(items, (str, Path)):
        return str(Path(items).expanduser().resolve()), read_batch_items(items)
    listed = list(items)
    if not listed:
        raise InvalidInputError("a batch needs at least one image")
    # A list has no path to name it by; its labels identify it (so the same list is the same batch).
    digest = hashlib.sha256("\n".join(item.label for item in listed).encode()).hexdigest()[:12]
    return f"list of {len(listed)} image(s), labels {digest}", listed


def _plan(item: BatchItem, config: RunConfig) -> _Plan:
    try:
        content = item.image_path.read_bytes()
    except OSError as error:
        # No content to hash: key the failure by path so a fixed file later gets its own key.
        reason = f"{item.image_path}: cannot read ({error.strerror or error})"
        return _Plan(item, item_key(f"unreadable:{item.image_path.resolve()}", config), reason)
    return _Plan(item, item_key(hashlib.sha256(content).hexdigest(), config))


def _batch_id(source: str, config: RunConfig) -> str:
    # The same folder or manifest with the same config is the same batch, wherever it is run from.
    return item_key(f"batch:{source}", config)[:12]


class _ItemRunner:
    """Runs the items of one batch, each at most once per key, on a pool of threads."""

    def __init__(
        self,
        batch_id: str,
        config: RunConfig,
        history: History,
        models: ModelStack,
        store: BatchStore,
        initial_inverter: PromptInverter | None = None,
    ) -> None:
        self.batch_id = batch_id
        self.config = config
        self.history = history
        self.models = models
        self.store = store
        self.initial_inverter = initial_inverter
        self._stop = threading.Event()

    def run_all(self, plans: list[_Plan], concurrency: int, on_item: ItemCallback | None) -> list[BatchItemResult]:
        # Two rows with the same content and config are one item: it is run once and reported twice.
        rows_by_key: dict[str, list[int]] = {}
        for position, plan in enumerate(plans):
            rows_by_key.setdefault(plan.key, []).append(position)
        results: list[BatchItemResult | None] = [None] * len(plans)
        pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="arpo-batch")
        try:
            futures = {pool.submit(self.run_one, plans[rows[0]]): rows for rows in rows_by_key.values()}
            for future in as_completed(futures):
                first = future.result()
                for position in futures[future]:
                    row = plans[position].item
                    result = first.model_copy(update={"image": row.label, "ground_truth": row.ground_truth})
                    results[position] = result
                    if on_item is not None:
                        on_item(result)
        except BaseException:
            # Ctrl-C (or a failing callback): in-flight items stop at their next node, queued ones never start.
            self._stop.set()
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        pool.shutdown(wait=True)
        return [result for result in results if result is not None]

    def run_one(self, plan: _Plan) -> BatchItemResult:
        """Run (or skip, or continue) one item; failures become a failed result, never an exception."""
        item = plan.item
        if plan.read_error is not None:
            return self._failed(plan, None, plan.read_error)
        handle: RunHandle | None = None
        try:
            known = self.store.item(plan.key)
            run_id = known.run_id if known is not None else None
            if run_id is None and known is not None and known.status == "running":
                run_id = self._orphaned_run(known)
            if run_id is not None:
                detail = self.history.get_run(run_id)
                if known.status == "finished" and detail.status == "finished":
                    return _result(plan, detail, skipped=True)
                handle = load_run(self.history, run_id, self.models, initial_inverter=self.initial_inverter)
            else:
                handle = self._start(plan)
            self._record(plan, "running", handle.run_id)
            execute_run(handle, on_update=self._stop_if_asked)
            detail = self.history.get_run(handle.run_id)
            if detail.status != "finished":
                return self._failed(plan, handle, f"run {detail.id} ended with status {detail.status}")
            self._record(plan, "finished", handle.run_id)
            return _result(plan, detail)
        except KeyboardInterrupt:
            # Asked to stop: the run is marked interrupted by execute_run and resumes next time.
            run_id = handle.run_id if handle else None
            self._record(plan, "pending", run_id)
            return BatchItemResult(
                image=item.label, ground_truth=item.ground_truth, key=plan.key, status="interrupted", run_id=run_id
            )
        except ArpoError as error:
            return self._failed(plan, handle, str(error))
        except Exception as error:  # noqa: BLE001 - one broken item must not end the batch
            message = f"{type(error).__name__}: {error}".splitlines()[0]
            if handle is not None:
                self.history.fail_run(handle.run_id, message)
            return self._failed(plan, handle, message)

    def _start(self, plan: _Plan) -> RunHandle:
        from arpo.tools.reference_image import load_reference_image

        reference = load_reference_image(plan.item.image_path)
        reference.name = plan.item.label
        context = build_context(self.config, self.history, self.models, initial_inverter=self.initial_inverter)
        # The item row is written before anything else, so a kill after this point resumes this run.
        self._record(plan, "running", None)
        return start_run(self.history, self.config, reference, context, kind=BATCH_RUN_KIND)

    def _orphaned_run(self, known: BatchItemState) -> str | None:
        """The run a kill left unrecorded between `start_run` and writing its id onto the item, if any."""
        for run_id, stored_config in self.store.unclaimed_runs(known.image, known.updated_at):
            if RunConfig.model_validate(stored_config) == self.config:
                return run_id
        return None

    def _record(self, plan: _Plan, status: str, run_id: str | None, error: str | None = None) -> None:
        self.store.record(
            plan.key, batch_id=self.batch_id, image=plan.item.label, status=status, run_id=run_id, error=error
        )

    def _failed(self, plan: _Plan, handle: RunHandle | None, message: str) -> BatchItemResult:
        run_id = handle.run_id if handle else None
        self._record(plan, "failed", run_id, message)
        return BatchItemResult(
            image=plan.item.label,
            ground_truth=plan.item.ground_truth,
            key=plan.key,
            status="failed",
            run_id=run_id,
            error=message,
        )

    def _stop_if_asked(self, _node: str, _update: dict) -> None:
        if self._stop.is_set():
            raise KeyboardInterrupt


def _result(plan: _Plan, detail: RunDetail, *, skipped: bool = False) -> BatchItemResult:
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
