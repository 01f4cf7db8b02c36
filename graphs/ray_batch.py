"""A batch spread over a Ray cluster: long-lived workers that each hold their models and pull items
from the batch's queue in the shared history (`arpo.storage.batches`).

The driver (`arpo batch --ray`) keys and queues the items and hands them to a `RayFleet`
(graphs/ray_workers.py): one worker per GPU (or `workers` CPU slots), watched and replaced when one
dies; the item a dead worker held goes back to the queue at once, and whichever worker claims it next
continues its run from the last checkpoint. The driver follows the queue for one progress display. Items travel as paths and keys;
images and results stay in the database and the image store, which every node must reach (a shared
PostgreSQL `--db` and a shared `--images` folder on a real cluster; SQLite on one machine).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from arpo.core.run_config import RunConfig
from arpo.graphs.batch import BatchReport, ItemCallback, PlannedBatch, plan_batch, resolve_items
from arpo.graphs.batch_manifest import BatchItem
from arpo.graphs.batch_worker import DEFAULT_LEASE_S, BatchWorker, PlannedItem, worker_name
from arpo.graphs.ray_workers import RayFleet, connect, default_workers, ray_module


class RayBatchWorker:
    """What a Ray actor holds: its history connection, its model stack and brains, built once."""

    def __init__(self, label: str, batch_id: str, config: dict[str, Any], database_url: str | None,
                 image_root: str | None, lease_s: float) -> None:
        from arpo.graphs.invocation import build_context, shareable_initial_inverter
        from arpo.storage.history import History

        run_config = RunConfig.model_validate(config)
        history = History.open(database_url, image_root)
        context = build_context(run_config, history)
        self.worker = BatchWorker(worker_name(label), batch_id, run_config, history, context.models,
                                  shareable_initial_inverter(run_config, context), lease_s)

    def name(self) -> str:
        return self.worker.name

    def drain(self, plans: dict[str, PlannedItem]) -> int:
        """Run items of the batch until none is left for anyone; how many this worker ran."""
        ran: list[str] = []
        self.worker.drain(plans, lambda result: ran.append(result.key))
        return len(ran)


def run_batch_on_ray(
    items: Sequence[BatchItem] | str | Path,
    config: RunConfig,
    *,
    address: str | None = None,
    workers: int | None = None,
    database_url: str | None = None,
    image_root: str | Path | None = None,
    on_item: ItemCallback | None = None,
    on_planned: Callable[[int], None] | None = None,
    lease_s: float = DEFAULT_LEASE_S,
) -> BatchReport:
    """Like `run_batch`, with the items run by workers on the Ray cluster at `address` (a local one,
    started here, when None). `workers`: how many (default: one per GPU the cluster has, else 2)."""
    from arpo.agents.brains import build_run_brains
    from arpo.storage.history import History

    ray_module()  # a missing Ray is one line before anything is opened
    source, planned_items = resolve_items(items)
    history = History.open(database_url, image_root)
    build_run_brains(config.vlm, config.llm)  # a missing key stops the batch here, not in every worker
    batch = plan_batch(history, source, planned_items, config)
    if on_planned is not None:
        on_planned(len(batch.plans))
    ray = connect(address, workers)
    arguments = (batch.batch_id, config.model_dump(mode="json"), database_url, str(image_root) if image_root else None, lease_s)
    fleet = RayFleet(ray, RayBatchWorker, arguments, workers or default_workers(ray), history.batches)
    reported: set[str] = set()
    fleet.run((batch.queued,), lambda: reported.update(_report_progress(batch, reported, on_item)))
    return batch.report({}, _skipping(on_item, reported))


def _report_progress(batch: PlannedBatch, reported: set[str], on_item: ItemCallback | None) -> set[str]:
    """Tell `on_item` of the items that ended since the last look, wherever they ran."""
    if on_item is None:
        return set()
    ended = {key for key, state in batch.history.batches.states(list(batch.queued)).items()
             if key not in reported and state.status in ("finished", "failed")}
    for plan in batch.plans:
        if plan.key in ended:
            on_item(batch.result_of(plan))
    return ended


def _skipping(on_item: ItemCallback | None, reported: set[str]) -> ItemCallback | None:
    """`on_item` for the rows the progress follower has not reported yet."""
    if on_item is None:
        return None
    return lambda result: None if result.key in reported else on_item(result)
