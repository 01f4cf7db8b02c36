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

from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from langgraph.types import Checkpointer

from arpo.graphs import agent_nodes, nodes, routing, session_nodes
from arpo.graphs.context import ArpoContext
from arpo.graphs.state import ArpoInput, ArpoOutput, ArpoState


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
    graph = _graph_with_loop_nodes()
    if agent:
        _add_agent(graph, routing.after_agent, routing.after_agent_generate)
    else:
        graph.add_conditional_edges("generate", routing.after_generate)
    graph.add_conditional_edges("select", routing.after_select)
    graph.add_conditional_edges("refine", routing.after_refine)
    return graph


def _graph_with_loop_nodes() -> StateGraph:
    """The loop's nodes and the edges every variant shares; each variant adds its own branches."""
    graph = StateGraph(ArpoState, context_schema=ArpoContext, input_schema=ArpoInput, output_schema=ArpoOutput)
    for name in ("initialize", "generate", "compare", "propose", "select", "refine", "finish"):
        graph.add_node(name, _timed(name, getattr(nodes, name)))
    graph.add_edge(START, "initialize")
    graph.add_edge("initialize", "generate")
    graph.add_edge("compare", "propose")
    graph.add_edge("propose", "select")
    graph.add_edge("finish", END)
    return graph


def _add_agent(graph: StateGraph, after_agent: Callable, after_generate: Callable) -> None:
    """The agent's node, where its turns go, and where generations go while it drives."""
    graph.add_node("agent", _timed("agent", agent_nodes.agent))
    graph.add_conditional_edges("agent", after_agent)
    graph.add_conditional_edges("generate", after_generate)


def compile_arpo_graph(checkpointer: Checkpointer = None, *, agent: bool = False):
    """The ARPO loop ready to invoke; pass a checkpointer to make runs resumable."""
    return _compiled(build_arpo_graph, "arpo", agent).copy(update={"checkpointer": checkpointer})


def build_session_graph(*, agent: bool = False) -> StateGraph:
    """The uncompiled session graph: the ARPO loop with a person's review after each generation;
    `agent`: the LLM drives it first, and the person reviews where it ended."""
    graph = _graph_with_loop_nodes()
    graph.add_node("review", session_nodes.review)
    if agent:
        _add_agent(graph, routing.after_session_agent, routing.after_session_agent_generate)
    else:
        graph.add_edge("generate", "review")
    graph.add_conditional_edges("review", routing.after_review)
    graph.add_conditional_edges("select", routing.after_session_select)
    graph.add_conditional_edges("refine", routing.after_session_refine)
    return graph


def compile_session_graph(checkpointer: Checkpointer = None, *, agent: bool = False):
    """The session graph ready to invoke; it needs a checkpointer to pause for the person."""
    return _compiled(build_session_graph, "arpo-session", agent).copy(update={"checkpointer": checkpointer})


@cache
def _compiled(build: Callable[..., StateGraph], name: str, agent: bool):
    """Each graph is built and compiled once per process (a few milliseconds a run otherwise); runs
    get a copy carrying their own checkpointer."""
    return build(agent=agent).compile(name=name)
