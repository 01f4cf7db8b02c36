"""Starting, running and resuming ARPO runs: the one place that wires config, context and graph.

The CLI, batch runs and sessions all go through here, so a run started one way can be resumed another.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

from arpo.core.errors import InvalidInputError
from arpo.core.loop_activity import LOOP_ACTIVITY
from arpo.core.run_config import RunConfig
from arpo.graphs.builder import compile_arpo_graph
from arpo.graphs.checkpoints import history_checkpointer, thread_config
from arpo.graphs.context import ArpoContext
from arpo.graphs.failures import failures_recorded
from arpo.graphs.state import ArpoInput

if TYPE_CHECKING:
    from arpo.agents.brains import Brains
    from arpo.storage.history import History
    from arpo.tools.inversion.base import PromptInverter
    from arpo.tools.model_stack import ModelStack
    from arpo.tools.reference_image import ReferenceImage

NodeUpdate = Callable[[str, dict], None]
"""Called after each node with its name and state update (progress display)."""


@dataclass
class RunHandle:
    """A run that exists in the history, with what is needed to execute it."""

    run_id: str
    config: RunConfig
    context: ArpoContext
    reference_sha256: str
    fresh: bool = False
    """Just started (`start_run`): no checkpoint can exist yet, so the first `execute_run` need not
    look for one."""


def build_context(
    config: RunConfig,
    history: History,
    models: ModelStack | None = None,
    *,
    initial_inverter: PromptInverter | None = None,
    brains: Brains | None = None,
) -> ArpoContext:
    """Models and brains for a config. Fails before anything is stored if either cannot be had.

    `initial_inverter`: the `--init` inverter another run of the same config built (see
    `shareable_initial_inverter`), so a batch or evaluation loads a regressor checkpoint once.
    `brains`: brains to use instead of building them from the config (a benchmark's in-process brain).
    """
    from arpo.agents.brains import build_run_brains
    from arpo.tools.model_stack import model_stack_for

    if config.framework == "enhanced" and config.vlm.provider == "offline":
        # Without a describing VLM the enhanced loop has nothing to compare and would quietly run as a
        # blind proposer; say so instead.
        raise InvalidInputError(
            "the enhanced framework needs a VLM to describe the images, but the VLM brain is offline; "
            "set --vlm-brain (or --brain) to openai or vllm, or use --framework vanilla"
        )
    if config.framework == "enhanced" and config.llm.provider == "offline":
        raise InvalidInputError("the enhanced framework needs an LLM brain to compare descriptions; set --llm-brain")
    if config.agent and config.llm.provider == "offline":
        raise InvalidInputError("--agent needs an LLM brain that calls tools; set --llm-brain (or --brain) to openai or vllm")
    if brains is None:
        brains = build_run_brains(config.vlm, config.llm)
    if models is None:
        models = model_stack_for(config)
    if config.init == "caption" or config.initial_prompt:
        initial_inverter = None
    elif initial_inverter is None:
        from arpo.tools.inverters import build_inverter

        initial_inverter = build_inverter(config.init, config, llm=brains.llm)
    return ArpoContext(
        models=models, history=history, brains=brains, framework=config.framework,
        initial_inverter=initial_inverter, config=config,
    )


def shareable_initial_inverter(config: RunConfig, context: ArpoContext) -> PromptInverter | None:
    """The context's `--init` inverter when other runs of `config` may use it too: not when it asks
    this run's LLM (EDITOR's rewrites would be logged as this run's brain calls)."""
    asks_the_llm = config.init == "editor" and not config.editor_inverter and context.brains.llm is not None
    return None if asks_the_llm else context.initial_inverter


def start_run(
    history: History, config: RunConfig, reference: ReferenceImage, context: ArpoContext, kind: str = "invert"
) -> RunHandle:
    """Store the reference and a new run row; the run is executed by `execute_run`."""
    stored = history.store_image(reference.image, role="reference", metadata={"source": reference.name})
    recorded_config = config.model_dump() | {
        "model_details": context.models.describe(),
        "brain_details": context.brains.describe_backends(),
    }
    run_id = history.create_run(stored.sha256, reference.name, recorded_config, kind=kind)
    return RunHandle(run_id=run_id, config=config, context=context, reference_sha256=stored.sha256, fresh=True)


def load_run(
    history: History, run_id: str, models: ModelStack | None = None, *, initial_inverter: PromptInverter | None = None
) -> RunHandle:
    """Rebuild a stored run's context from its recorded configuration (for resume)."""
    detail = history.get_run(run_id)
    config = RunConfig.model_validate(detail.config)
    context = build_context(config, history, models, initial_inverter=initial_inverter)
    return RunHandle(run_id=detail.id, config=config, context=context, reference_sha256=detail.reference_sha256)


def execute_run(handle: RunHandle, *, on_update: NodeUpdate | None = None) -> None:
    """Run (or continue) the loop to its end, checkpointing after every node; in agent mode
    (`config.agent`) the LLM drives it."""
    with open_graph(handle, partial(compile_arpo_graph, agent=handle.config.agent)) as (graph, thread):
        start = initial_input(handle) if handle.fresh else _continuation(handle, graph, thread)
        handle.fresh = False  # from here on the run has checkpoints to continue from
        if start is not _FINISHED:
            stream_updates(handle, graph, start, on_update)


_FINISHED = object()
"""`_continuation`'s answer for a run whose checkpoints say it is over."""


def _continuation(handle: RunHandle, graph: Any, thread: dict) -> Any:
    """Where a stored run goes on: None to continue from its last checkpoint, its initial input when
    it has none, `_FINISHED` when it is over."""
    snapshot = graph.get_state(thread)
    # A kill between a node saving its writes and the step's checkpoint leaves `next` empty while
    # that task is still pending; only a thread with neither is finished.
    if snapshot.values and not snapshot.next and not snapshot.tasks:
        return _FINISHED
    return None if snapshot.values else initial_input(handle)


@contextmanager
def open_graph(handle: RunHandle, compile_graph: Callable[[Any], Any]) -> Iterator[tuple[Any, dict]]:
    """A graph compiled with the history's checkpointer, and the run's thread, for one stretch of work."""
    with history_checkpointer(handle.context.history) as checkpointer:
        yield compile_graph(checkpointer), thread_config(handle.run_id)


def stream_updates(handle: RunHandle, graph: Any, start: Any, on_update: NodeUpdate | None = None) -> None:
    """Stream a graph from `start` (an input, None to continue, or a resume Command) until it ends or
    pauses, marking the run failed or interrupted in the history when it cannot go on."""
    history = handle.context.history
    thread = thread_config(handle.run_id)
    with failures_recorded(history, handle.run_id), brain_calls_kept(handle, lambda: current_iteration(graph, thread)):
        # "async": a node's checkpoint is saved while the next node runs (mostly waiting on a brain),
        # and the saver settles the node's history writes first (checkpoints.settle_before_saving).
        with history.writing_behind(handle.run_id), LOOP_ACTIVITY.busy():
            # Busy: the run's history writes and checkpoints wait for its brain waits (50 ms at most)
            # rather than run beside its Python (core/loop_activity.py).
            history.set_status(handle.run_id, "running")
            for chunk in graph.stream(
                start, thread, context=handle.context, stream_mode="updates", durability="async"
            ):
                for node, update in chunk.items():
                    if on_update is not None and node != "__interrupt__":
                        on_update(node, update or {})


@contextmanager
def brain_calls_kept(handle: RunHandle, iteration: Callable[[], int | None] | None = None) -> Iterator[None]:
    """On any failure or Ctrl-C, store the brain calls made since the last save (failed requests
    included) before the run is marked, so the history shows what the brains answered.

    `iteration` says which iteration the interrupted step belonged to, so the calls are filed under
    it as a finished step's calls would be (None when it cannot tell).
    """
    try:
        yield
    except BaseException:
        try:
            index = _iteration_or_none(iteration)
            handle.context.save_brain_calls(handle.run_id, index)
        except Exception:  # noqa: BLE001 - never hide the original failure behind this one
            pass
        raise


def current_iteration(graph: Any, thread: dict) -> int:
    """The iteration of the run's last checkpoint: the one its next (or failed) step works on.
    Before the first step ends there is none, and the first step's calls belong to iteration 0."""
    return graph.get_state(thread).values.get("iteration", 0)


def _iteration_or_none(iteration: Callable[[], int | None] | None) -> int | None:
    if iteration is None:
        return None
    try:
        return iteration()
    except Exception:  # noqa: BLE001 - the calls are worth keeping even unfiled
        return None


def initial_input(handle: RunHandle) -> ArpoInput:
    """The graph input that starts a stored run from the beginning."""
    start = ArpoInput(
        run_id=handle.run_id,
        reference_sha256=handle.reference_sha256,
        max_steps=handle.config.steps,
        seed=handle.config.seed,
    )
    if handle.config.initial_prompt:
        start["initial_prompt"] = handle.config.initial_prompt
    return start
