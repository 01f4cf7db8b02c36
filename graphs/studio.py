"""The graphs `langgraph.json` exposes to LangGraph Studio and `langgraph dev`.

The ARPO loop's context (`ArpoContext`) holds live models, brains and the history, which a server
cannot send over HTTP. So Studio gets a thin outer graph whose context is plain settings
(`StudioSettings`: model stack, brains, database; each left empty takes the same ARPO_* setting the
CLI reads, and with none set, tiny models and no brain, so it runs anywhere offline). Its `start` node
stores the reference and opens a run in the history; its `invert` node builds the live context from the
settings and runs the unchanged ARPO loop as a subgraph, so Studio shows the loop's own nodes and the
server's checkpointer covers them too. Runs started here are ordinary history runs: `arpo history`
lists them and `arpo resume` can finish them.

Everything is compiled without a checkpointer, because the server brings its own. Models are loaded
once per process and per settings, on the first run that needs them.

    langgraph dev                     # in the repository root; open the Studio link it prints
    ARPO_MODELS=sd15 ARPO_BRAIN=openai langgraph dev   # real models and brains
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypedDict

from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime

from arpo.core.run_config import RunConfig
from arpo.core.settings import ArpoSettings, BrainOptions, LoopOptions, ModelOptions
from arpo.graphs.builder import compile_arpo_graph, compile_session_graph
from arpo.graphs.invocation import build_context, initial_input, load_run, start_run

if TYPE_CHECKING:
    from arpo.storage.history import History
    from arpo.tools.model_stack import ModelStack


STUDIO_FALLBACKS = {"models": "tiny", "brain": "offline"}
"""What Studio uses where neither its context panel nor an ARPO_* variable says: a run that works
anywhere offline."""


@dataclass
class StudioSettings:
    """Run settings chosen in Studio's context panel; each left empty (None) takes the ARPO_* setting
    the CLI reads, else Studio's fallback (tiny models, no brain)."""

    models: str | None = None
    """Model stack: tiny, sd15, sdxl, pixart, or a diffusers model id or local path."""
    brain: str | None = None
    """Backend of both brain roles: openai, vllm or offline (phrase banks, no LLM)."""
    base_url: str | None = None
    """Server of an OpenAI-compatible brain (vLLM); None takes the provider's default."""
    vlm: str | None = None
    """VLM model name; None takes the provider's default."""
    llm: str | None = None
    """LLM model name; None takes the provider's default."""
    framework: str | None = None
    """vanilla (one two-image comparison) or enhanced (describe both images, then compare)."""
    db: str | None = None
    """History database URL; None takes arpo's default under ARPO_HOME."""

    def arpo_settings(self) -> ArpoSettings:
        return ArpoSettings.read(**STUDIO_FALLBACKS)

    def database_url(self) -> str | None:
        return self.db or self.arpo_settings().db


class StudioInput(TypedDict, total=False):
    """What a person types into Studio to start a run."""

    image: str
    """Path of the reference image, on the machine running the server."""
    steps: int
    """Proposal rounds allowed (default 10)."""
    seed: int
    """Noise seed of every generation (default 0)."""
    initial_prompt: str
    """Start from this prompt instead of a caption."""


class StudioState(StudioInput, total=False):
    """The outer graph's state: the input, the run it opened, and what the loop returned."""

    run_id: str
    """History id of the run (the loop's state lives under the server's checkpoint of this thread)."""
    reference_sha256: str
    best_prompt: str
    best_clip_i: float
    prompt: str
    """The last prompt of the loop."""
    stopped_because: str


class StudioOutput(TypedDict, total=False):
    """What Studio shows when the run ends."""

    run_id: str
    best_prompt: str
    best_clip_i: float
    prompt: str
    stopped_because: str


class _Resources:
    """Histories and model stacks, opened once per process (or handed in by a test)."""

    def __init__(self, models: ModelStack | None) -> None:
        self._given_models = models
        self._models: dict[tuple, ModelStack] = {}
        self._histories: dict[str | None, History] = {}
        self._lock = threading.Lock()

    def history(self, database_url: str | None) -> History:
        from arpo.storage.history import History

        with self._lock:
            if database_url not in self._histories:
                self._histories[database_url] = History.open(database_url)
            return self._histories[database_url]

    def models(self, config: RunConfig) -> ModelStack:
        from arpo.tools.model_stack import model_stack_for, model_stack_key

        if self._given_models is not None:
            return self._given_models
        spec = model_stack_key(config)
        with self._lock:
            if spec not in self._models:
                self._models[spec] = model_stack_for(config)
            return self._models[spec]


def run_config_for(settings: StudioSettings, state: StudioInput) -> RunConfig:
    """The run configuration a Studio run records: the context panel and the input over the settings."""
    return settings.arpo_settings().run_config(
        ModelOptions.chosen(models=settings.models),
        BrainOptions.chosen(brain=settings.brain, base_url=settings.base_url, vlm=settings.vlm, llm=settings.llm),
        LoopOptions.chosen(framework=settings.framework, steps=state.get("steps"), seed=state.get("seed")),
        initial_prompt=state.get("initial_prompt") or None,
    )


def build_studio_graph(models: ModelStack | None = None, *, session: bool = False) -> StateGraph:
    """The uncompiled Studio graph: start (open a run) → invert (the ARPO loop as a subgraph).

    `models` pins one model stack for every run (tests pass the tiny stack); by default each distinct
    model choice is loaded once, when first used. With `session`, the subgraph is the session graph:
    it pauses after every image, and Studio's resume box takes the reply (a HumanTurn as JSON, e.g.
    {"action": "feedback", "text": "it is a watercolour"}).
    """
    from arpo.tools.reference_image import load_reference_image

    resources = _Resources(models)
    compile_loop = compile_session_graph if session else compile_arpo_graph
    arpo_loop = compile_loop()
    agent_loop = compile_loop(agent=True)  # for runs whose settings ask for agent mode (ARPO_AGENT=1)
    run_kind = "session" if session else "invert"

    def start(state: StudioState, runtime: Runtime[StudioSettings]) -> dict:
        """Store the reference image and open a run for it (once: a re-run keeps the first run)."""
        if state.get("run_id"):
            return {}
        settings = runtime.context or StudioSettings()
        config = run_config_for(settings, state)
        history = resources.history(settings.database_url())
        reference = load_reference_image(state["image"])
        context = build_context(config, history, resources.models(config))
        handle = start_run(history, config, reference, context, kind=run_kind)
        return {"run_id": handle.run_id, "reference_sha256": handle.reference_sha256}

    def invert(state: StudioState, runtime: Runtime[StudioSettings]) -> dict:
        """Run the ARPO loop for the opened run, with live models and brains as its context."""
        settings = runtime.context or StudioSettings()
        history = resources.history(settings.database_url())
        stored = RunConfig.model_validate(history.get_run(state["run_id"]).config)
        handle = load_run(history, state["run_id"], resources.models(stored))
        loop = agent_loop if stored.agent else arpo_loop
        result = loop.invoke(initial_input(handle), context=handle.context)
        return {key: result[key] for key in StudioOutput.__annotations__ if key in result}

    graph = StateGraph(StudioState, context_schema=StudioSettings, input_schema=StudioInput, output_schema=StudioOutput)
    graph.add_node("start", start)
    graph.add_node("invert", invert)
    graph.add_edge(START, "start")
    graph.add_edge("start", "invert")
    graph.add_edge("invert", END)
    return graph


arpo = build_studio_graph().compile(name="arpo")
"""The ARPO loop for Studio, compiled without a checkpointer (langgraph.json: `arpo`)."""

session = build_studio_graph(session=True).compile(name="arpo-session")
"""A session for Studio: the loop pausing for a person after every image (langgraph.json: `session`)."""
