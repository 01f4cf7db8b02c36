"""Workers on a Ray cluster that drain one queue in the shared history: started, watched, and replaced
when they die. Batches (`arpo.graphs.ray_batch`) and evaluations (`arpo.eval.ray_eval`) both run on it.

A worker is a Ray actor that holds its models and has two methods: `name()` (how it claims items in the
queue) and `drain(...)` (claim and run items until none is left for anyone). The fleet starts `size`
of them and waits; when one dies, whatever it held goes back to the queue at once and a replacement is
started, so whoever claims the item next continues it. Between waits the fleet calls `on_progress`,
so one progress display can follow the queue, wherever the items run.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable
from typing import Any

from arpo.core.errors import InvalidInputError
from arpo.storage.batches import BatchStore

PROGRESS_POLL_S = 0.5
MAX_REPLACEMENTS = 8
"""Workers started in place of dead ones, at most, before the work gives up on the cluster."""
PASSED_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "LANGGRAPH_STRICT_MSGPACK", "TOKENIZERS_PARALLELISM")
"""Environment a worker gets from the driver besides ARPO_*; API keys are not among them (they must
be set on the worker nodes: Ray keeps a job's environment in its cluster state)."""


def ray_module() -> Any:
    try:
        import ray
    except ImportError:
        raise InvalidInputError('--ray needs Ray: pip install "arpo[ray]"') from None
    return ray


def connect(address: str | None, workers: int | None) -> Any:
    """Ray, connected to the cluster at `address` (`auto`: the one this machine belongs to), or to a
    local one started here, sized to the workers asked for, without the dashboard."""
    ray = ray_module()
    if not ray.is_initialized():
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(num_cpus=max(workers or 2, 1), include_dashboard=False, log_to_driver=False)
    return ray


def default_workers(ray: Any) -> int:
    """One worker per GPU of the cluster, else two."""
    return int(ray.cluster_resources().get("GPU", 0)) or 2


class RayFleet:
    """`size` workers of one actor class draining a queue; see the module's docstring."""

    def __init__(self, ray: Any, worker_class: type, arguments: tuple, size: int, store: BatchStore) -> None:
        self.ray, self.size, self.store = ray, size, store
        gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
        variables = {name: value for name, value in os.environ.items() if name.startswith("ARPO_") or name in PASSED_VARIABLES}
        self._actor_class = ray.remote(num_cpus=1, num_gpus=gpus, max_restarts=0)(worker_class).options(
            runtime_env={"env_vars": variables}
        )
        self._arguments = arguments
        self._actors: dict[Any, Any] = {}
        """Each drain's actor: holding the handle keeps the actor alive (Ray ends one nobody holds)."""
        self._names: dict[Any, Any] = {}
        self.started = 0

    def run(self, drain_arguments: tuple, on_progress: Callable[[], None] = lambda: None) -> None:
        """Drain the queue to its end with the fleet's workers.

        Ray reports a worker's death on standard output; while the fleet runs, that goes to standard
        error, so that what arpo prints on standard output (`--json`) stays one clean document."""
        with contextlib.redirect_stdout(sys.stderr):
            running = {self._launch(drain_arguments) for _ in range(self.size)}
            while running:
                done, _ = self.ray.wait(list(running), timeout=PROGRESS_POLL_S)
                for ref in done:
                    running.discard(ref)
                    if self._died(ref):
                        running.add(self._launch(drain_arguments, replacing=True))
                on_progress()
            on_progress()

    def _launch(self, drain_arguments: tuple, *, replacing: bool = False) -> Any:
        """Start a worker draining the queue; the reference to its drain."""
        if replacing and self.started - self.size >= MAX_REPLACEMENTS:
            raise InvalidInputError(f"{MAX_REPLACEMENTS} workers died; the cluster cannot finish this work")
        self.started += 1
        actor = self._actor_class.remote(f"ray-{self.started}", *self._arguments)
        ref = actor.drain.remote(*drain_arguments)
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
                self.store.release(name)
            return True
        finally:
            self._actors.pop(ref, None)

    def _name_of(self, ref: Any) -> str | None:
        try:
            return self.ray.get(self._names.pop(ref), timeout=5)
        except Exception:  # noqa: BLE001 - it died before it could say; its lease runs out instead
            return None
