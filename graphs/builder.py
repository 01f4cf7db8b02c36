"""Builds the graphs.

ARPO loop: initialize → generate → compare → propose → select → (generate | refine | finish), and
refine → (generate | finish) when a round kept nothing.
Session: the same nodes with `review` after every generation, where a person steers the loop:
initialize → generate → review → (compare → propose → select → (generate | refine | review) | refine |
generate | finish), and refine → (generate | review).
Agent mode (`agent=True`, graphs/agent_nodes.py) adds `agent` after the first generation: it takes turns
(agent → agent) until it ends, then → generate (its last prompt, when not rendered yet) → finish, or
→ compare when it gave up and the fixed loop goes on; in a session it ends at the person's review.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import cache, wraps
from typing import get_args, get_type_hints

from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from langgraph.types import Checkpointer, Command

from arpo.graphs import agent_nodes, nodes, routing, session_nodes
from arpo.graphs.context import ArpoContext
from arpo.graphs.state import ArpoInput, ArpoOutput, ArpoRouting, ArpoState

Router = Callable[[ArpoRouting], str]
"""Where the graph goes after a node, from the state as the node leaves it (graphs/routing.py)."""


def _timed(name: str, node: Callable) -> Callable:
    """Record each node's wall time and model/brain share in the context's telemetry."""

    @wraps(node)
    def run(state: ArpoState, runtime: Runtime[ArpoContext]) -> dict:
        context = runtime.context
        started = time.perf_counter()
        with context.telemetry.measure(name, state.get("iteration", 0), context.counters):
            update = node(state, runtime)
        # The run's own time, kept in the state so a time budget holds across resumes.
        return update | {"seconds_spent": state.get("seconds_spent", 0.0) + time.perf_counter() - started}

    return run


def build_arpo_graph(*, agent: bool = False) -> StateGraph:
    """The uncompiled graph, for callers (and `langgraph dev`) that bring their own checkpointer;
    `agent`: the LLM drives it (agent mode)."""
    routes: dict[str, Router] = {"select": routing.after_select, "refine": routing.after_refine}
    if agent:
        routes |= {"agent": routing.after_agent, "generate": routing.after_agent_generate}
    else:
        routes["generate"] = routing.after_generate
    graph = _graph_with_loop_nodes(routes)
    if agent:
        _add_node(graph, "agent", _timed("agent", agent_nodes.agent), routes)
    return graph


def _graph_with_loop_nodes(routes: dict[str, Router]) -> StateGraph:
    """The loop's nodes, each routed by its entry in `routes` (if any), and the fixed edges every
    variant shares; each variant adds its own nodes and edges."""
    graph = StateGraph(ArpoState, context_schema=ArpoContext, input_schema=ArpoInput, output_schema=ArpoOutput)
    for name in ("initialize", "generate", "compare", "propose", "select", "refine", "finish"):
        _add_node(graph, name, _timed(name, getattr(nodes, name)), routes)
    graph.add_edge(START, "initialize")
    graph.add_edge("initialize", "generate")
    graph.add_edge("compare", "propose")
    graph.add_edge("propose", "select")
    graph.add_edge("finish", END)
    return graph


def _add_node(graph: StateGraph, name: str, node: Callable, routes: dict[str, Router]) -> None:
    """Add a node; one with a router in `routes` says itself where the graph goes next."""
    router = routes.get(name)
    if router is None:
        graph.add_node(name, node)
    else:
        graph.add_node(name, _routed(node, router), destinations=_destinations(router))


def _routed(node: Callable, router: Router) -> Callable:
    """The node, then its router on the state as the node leaves it, as one Command (the update and
    where to go). A conditional edge would decide the same, but LangGraph copies every channel of the
    state to hand it the new values (about 0.25 ms a routing, seven a run); the node already has them.
    The state's channels all keep their last value (no reducers), so merging the update is exact."""

    @wraps(node)
    def run(state: ArpoState, runtime: Runtime[ArpoContext]) -> Command:
        update = node(state, runtime)
        return Command(update=update, goto=router({**state, **update}))

    return run


def _destinations(router: Router) -> tuple[str, ...]:
    """The nodes a router can send the graph to (its return type's literals), so the graph can be
    drawn with its branches."""
    return get_args(get_type_hints(router)["return"])


def compile_arpo_graph(checkpointer: Checkpointer = None, *, agent: bool = False):
    """The ARPO loop ready to invoke; pass a checkpointer to make runs resumable."""
    return _compiled(build_arpo_graph, "arpo", agent).copy(update={"checkpointer": checkpointer})


def build_session_graph(*, agent: bool = False) -> StateGraph:
    """The uncompiled session graph: the ARPO loop with a person's review after each generation;
    `agent`: the LLM drives it first, and the person reviews where it ended."""
    routes: dict[str, Router] = {
        "review": routing.after_review,
        "select": routing.after_session_select,
        "refine": routing.after_session_refine,
    }
    if agent:
        routes |= {"agent": routing.after_session_agent, "generate": routing.after_session_agent_generate}
    graph = _graph_with_loop_nodes(routes)
    _add_node(graph, "review", session_nodes.review, routes)
    if agent:
        _add_node(graph, "agent", _timed("agent", agent_nodes.agent), routes)
    else:
        graph.add_edge("generate", "review")
    return graph


def compile_session_graph(checkpointer: Checkpointer = None, *, agent: bool = False):
    """The session graph ready to invoke; it needs a checkpointer to pause for the person."""
    return _compiled(build_session_graph, "arpo-session", agent).copy(update={"checkpointer": checkpointer})


@cache
def _compiled(build: Callable[..., StateGraph], name: str, agent: bool):
    """Each graph is built and compiled once per process (a few milliseconds a run otherwise); runs
    get a copy carrying their own checkpointer."""
    return build(agent=agent).compile(name=name)
