"""A batch spread over a Ray cluster: long-lived workers that each hold their models and pull items
from the batch's queue in the shared history (`arpo.storage.batches`).

The driver (`arpo batch --ray`) keys and queues the items, starts one worker per GPU (or `workers`
CPU slots), follows the queue for progress, and watches the workers. A worker that dies loses only
the item it held: the driver hands that item back at once and starts a replacement, and whichever
worker claims it next continues its run from the last checkpoint. Items travel as paths and keys;
images and results stay in the database and the image store, which every node must reach (a shared
PostgreSQL `--db` and a shared `--images` folder on a real cluster; SQLite on one machine).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from arpo.core.errors import InvalidInputError
from arpo.core.run_config import RunConfig
from arpo.graphs.batch import BatchReport, ItemCallback, PlannedBatch, plan_batch, resolve_items
from arpo.graphs.batch_manifest import BatchItem
from arpo.graphs.batch_worker import DEFAULT_LEASE_S, BatchWorker, PlannedItem, worker_name

PROGRESS_POLL_S = 0.5
MAX_REPLACEMENTS = 8
"""Workers started in place of dead ones, at most, before the batch gives up on the cluster."""
PASSED_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "LANGGRAPH_STRICT_MSGPACK", "TOKENIZERS_PARALLELISM")
"""Environment a worker gets from the driver besides ARPO_*; API keys are not among them (they must
be set on the worker nodes: Ray keeps a job's environment in its cluster state)."""


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

    ray = _ray()
    source, planned_items = resolve_items(items)
    history = History.open(database_url, image_root)
    build_run_brains(config.vlm, config.llm)  # a missing key stops the batch here, not in every worker
    batch = plan_batch(history, source, planned_items, config)
    if on_planned is not None:
        on_planned(len(batch.plans))
    _connect(ray, address, workers)
    fleet = _Fleet(ray, batch, config, database_url, str(image_root) if image_root else None, lease_s,
                   workers or _default_workers(ray))
    reported = fleet.run(on_item)
    return batch.report({}, _skipping(on_item, reported))


class _Fleet:
    """The batch's workers on the cluster: started, watched, and replaced when they die."""

    def __init__(self, ray: Any, batch: PlannedBatch, config: RunConfig, database_url: str | None,
                 image_root: str | None, lease_s: float, size: int) -> None:
        self.ray, self.batch, self.size = ray, batch, size
        gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
        variables = {name: value for name, value in os.environ.items() if name.startswith("ARPO_") or name in PASSED_VARIABLES}
        self._actor_class = ray.remote(num_cpus=1, num_gpus=gpus, max_restarts=0)(RayBatchWorker).options(
            runtime_env={"env_vars": variables}
        )
        self._arguments = (batch.batch_id, config.model_dump(mode="json"), database_url, image_root, lease_s)
        self._actors: dict[Any, Any] = {}
        """Each drain's actor: holding the handle keeps the actor alive (Ray ends one nobody holds)."""
        self._names: dict[Any, Any] = {}
        self.started = 0

    def run(self, on_item: ItemCallback | None) -> set[str]:
        """Run the batch to its end; the keys reported to `on_item` on the way."""
        running = {self._launch() for _ in range(self.size)}
        reported: set[str] = set()
        while running:
            done, _ = self.ray.wait(list(running), timeout=PROGRESS_POLL_S)
            for ref in done:
                running.discard(ref)
                if self._died(ref):
                    running.add(self._launch(replacing=True))
            reported |= _report_progress(self.batch, reported, on_item)
        return reported

    def _launch(self, *, replacing: bool = False) -> Any:
        """Start a worker draining the queue; the reference to its drain."""
        if replacing and self.started - self.size >= MAX_REPLACEMENTS:
            raise InvalidInputError(f"{MAX_REPLACEMENTS} batch workers died; the cluster cannot run this batch")
        self.started += 1
        actor = self._actor_class.remote(f"ray-{self.started}", *self._arguments)
        ref = actor.drain.remote(self.batch.queued)
        self._actors[ref], self._names[ref] = actor, actor.name.remote()
        return ref

    def _died(self, ref: Any) -> bool:
        """Whether the worker behind `ref` died; if so, what it held goes back to the queue at once."""
        try:
            self.ray.get(ref)
            return False
        except self.ray.exceptions.RayActorError:
            name = self._name_of(ref)
            if name is not None:
                self.batch.history.batches.release(name)
            return True
        finally:
            self._actors.pop(ref, None)

    def _name_of(self, ref: Any) -> str | None:
        try:
            return self.ray.get(self._names.pop(ref), timeout=5)
        except Exception:  # noqa: BLE001 - it died before it could say; its lease runs out instead
            return None


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


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise InvalidInputError('--ray needs Ray: pip install "arpo[ray]"') from None
    return ray


def _connect(ray: Any, address: str | None, workers: int | None) -> None:
    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        # A local cluster sized to the workers asked for, without the dashboard (nothing listens on a port).
        ray.init(num_cpus=max(workers or 2, 1), include_dashboard=False, log_to_driver=False)


def _default_workers(ray: Any) -> int:
    return int(ray.cluster_resources().get("GPU", 0)) or 2

