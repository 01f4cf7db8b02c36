"""An evaluation spread over a Ray cluster: each (image, method) unit is an item of a queue in the
shared history, and long-lived workers, each holding its models, metric suite and methods, take units
from it (`arpo eval --ray`).

A unit recovers the method's prompt for the image and scores it at every evaluation seed still
missing, exactly as the evaluation runner does on one machine (`EvalRunner.run_unit`); its cells are
written as they are scored. A worker that dies loses only the unit it held: the fleet hands it back at
once and the next worker to take it continues where the cells and the method's run stopped.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from arpo.core.run_config import RunConfig
from arpo.graphs.batch_worker import DEFAULT_LEASE_S, drain_queue, worker_name
from arpo.graphs.ray_workers import RayFleet, connect, default_workers, ray_module

if TYPE_CHECKING:
    from collections.abc import Callable

    from arpo.eval.datasets import EvalDataset
    from arpo.eval.seeds import SeedPlan
    from arpo.storage.history import History


def unit_key(evaluation_id: str, case_key: str, method: str) -> str:
    """The queue key of one (image, method) unit of an evaluation."""
    return hashlib.sha256(f"evaluation:{evaluation_id}\n{case_key}\n{method}".encode()).hexdigest()


def queue_id(evaluation_id: str) -> str:
    """The batch row an evaluation's units are queued under (evaluation ids are 12 hex digits)."""
    return f"e{evaluation_id[:11]}"


class RayEvalWorker:
    """What a Ray actor holds for an evaluation: history, models, metric suite and methods, built once."""

    def __init__(self, label: str, config: dict[str, Any], database_url: str | None, image_root: str | None,
                 manifest: str, method_names: list[str], metric_names: list[str]) -> None:
        from arpo.eval.datasets import load_dataset
        from arpo.eval.methods import MethodContext, build_method
        from arpo.eval.metrics.suite import build_metric_suite
        from arpo.eval.runner import EvalRunner
        from arpo.storage.history import History
        from arpo.tools.model_stack import model_stack_for
        from arpo.tools.text_to_image import TINY_PRESETS

        run_config = RunConfig.model_validate(config)
        self.history = History.open(database_url, image_root)
        stack = model_stack_for(run_config)
        suite = build_metric_suite(stack.clip, tiny=run_config.models in TINY_PRESETS, names=metric_names,
                                   device=run_config.device)
        context = MethodContext(models=stack, history=self.history, base_config=run_config)
        self.methods = {name: build_method(name, context) for name in method_names}
        self.runner = EvalRunner(history=self.history, models=stack, suite=suite, methods=list(self.methods.values()),
                                 progress=lambda _line: None)
        self.cases = {case.key: case for case in load_dataset(manifest).cases}
        self.worker = worker_name(label)

    def name(self) -> str:
        return self.worker

    def drain(self, evaluation_id: str, units: dict[str, tuple[str, str]], plan: SeedPlan, lease_s: float) -> int:
        """Take units until none is left for anyone; how many this worker ran."""
        store = self.history.batches
        ran = 0

        def run(claimed) -> None:
            nonlocal ran
            case_key, method = units[claimed.key]
            try:
                self.runner.run_unit(evaluation_id, self.cases[case_key], self.methods[method], plan)
            except Exception as error:  # noqa: BLE001 - one broken unit must not end the evaluation
                message = f"{type(error).__name__}: {error}".splitlines()[0]
                store.record(claimed.key, batch_id=queue_id(evaluation_id), image=claimed.image, status="failed", error=message)
                return
            store.record(claimed.key, batch_id=queue_id(evaluation_id), image=claimed.image, status="finished")
            ran += 1

        drain_queue(store, list(units), self.worker, run, lease_s=lease_s)
        return ran


def run_evaluation_on_ray(
    evaluation_id: str,
    dataset: EvalDataset,
    method_names: list[str],
    metric_names: list[str],
    plan: SeedPlan,
    config: RunConfig,
    history: History,
    *,
    database_url: str | None,
    image_root: str | Path | None,
    address: str | None = None,
    workers: int | None = None,
    progress: Callable[[str], None] = lambda _line: None,
    lease_s: float = DEFAULT_LEASE_S,
) -> None:
    """Fill every missing cell of the evaluation with workers on the Ray cluster at `address` (a local
    one, started here, when None); one progress line whenever more cells are done."""
    ray_module()
    units = _queue_units(evaluation_id, dataset, method_names, plan, history)
    ray = connect(address, workers)
    arguments = (config.model_dump(mode="json"), database_url, str(image_root) if image_root else None,
                 str(dataset.location), method_names, list(metric_names))
    fleet = RayFleet(ray, RayEvalWorker, arguments, workers or default_workers(ray), history.batches)
    total = len(dataset.cases) * len(method_names) * len(plan.eval_seeds)
    shown = [-1]

    def report() -> None:
        done = len(history.evaluations.cells(evaluation_id, status="done"))
        if done != shown[0]:
            shown[0] = done
            progress(f"[{done}/{total}] cells done")

    fleet.run((evaluation_id, units, plan, lease_s), report)


def _queue_units(evaluation_id: str, dataset: EvalDataset, method_names: list[str], plan: SeedPlan,
                 history: History) -> dict[str, tuple[str, str]]:
    """Every (image, method) unit with a missing cell, queued; key -> (image key, method)."""
    done = {(cell.image_key, cell.method, cell.seed) for cell in history.evaluations.cells(evaluation_id, status="done")}
    units = {
        unit_key(evaluation_id, case.key, method): (case.key, method)
        for case in dataset.cases
        for method in method_names
        if any((case.key, method, seed) not in done for seed in plan.eval_seeds)
    }
    store = history.batches
    store.ensure_batch(queue_id(evaluation_id), f"evaluation {evaluation_id}", {"evaluation": evaluation_id}, len(units))
    store.enqueue(queue_id(evaluation_id), [(key, f"{case_key} · {method}") for key, (case_key, method) in units.items()])
    return units
