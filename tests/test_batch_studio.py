"""langgraph.json: every graph it names imports by file path (as `langgraph dev` loads it), is compiled
without a checkpointer, shows the ARPO loop's nodes, and runs under a server-style checkpointer."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph.state import CompiledStateGraph

from arpo import SAMPLE_IMAGE
from arpo.storage.history import History

REPO_ROOT = Path(__file__).resolve().parent.parent
LOOP_NODES = {"initialize", "generate", "compare", "propose", "select", "finish"}


def load_graph(spec: str):
    """Import `./path/file.py:variable` the way the LangGraph server does: by file, as its own module."""
    file_part, variable = spec.rsplit(":", 1)
    path = (REPO_ROOT / file_part).resolve()
    module_name = f"langgraph_json_{path.stem}"
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_name] = module
    module_spec.loader.exec_module(module)
    return module, getattr(module, variable)


def langgraph_graphs():
    config = json.loads((REPO_ROOT / "langgraph.json").read_text())
    assert config["dependencies"] == ["."]
    return sorted(config["graphs"].items())


@pytest.mark.parametrize(("name", "spec"), langgraph_graphs())
def test_langgraph_json_graphs_import_and_compile_without_a_checkpointer(name, spec):
    _, graph = load_graph(spec)
    assert isinstance(graph, CompiledStateGraph)
    assert graph.checkpointer is None  # `langgraph dev` refuses graphs that bring their own
    assert graph.get_graph(xray=True).nodes  # drawable, as Studio draws it


def test_studio_graph_shows_and_runs_the_arpo_loop_with_plain_settings(arpo_home, monkeypatch):
    from arpo.tools.model_stack import build_model_stack

    monkeypatch.delenv("ARPO_BRAIN", raising=False)
    module, graph = load_graph(dict(langgraph_graphs())["arpo"])
    drawn = set(graph.get_graph(xray=True).nodes)
    assert {f"invert:{node}" for node in LOOP_NODES} <= drawn and "start" in drawn

    # As the server would: its own checkpointer, context sent as plain JSON settings.
    studio = module.build_studio_graph(models=build_model_stack("tiny")).compile(checkpointer=InMemorySaver())
    thread = {"configurable": {"thread_id": "studio-1"}}
    seen_nodes = [
        node
        for namespace, update in studio.stream(
            {"image": str(SAMPLE_IMAGE), "steps": 1}, thread, context={"models": "tiny"}, subgraphs=True
        )
        for node in update
    ]
    assert seen_nodes[0] == "start" and seen_nodes[-1] == "invert"
    assert LOOP_NODES <= set(seen_nodes)  # the loop's own nodes stream through as a subgraph
    result = studio.get_state(thread).values

    detail = History.open().get_run(result["run_id"])
    assert (detail.status, detail.best_prompt, detail.best_clip_i) == ("finished", result["best_prompt"], result["best_clip_i"])
    assert detail.config["vlm"]["provider"] == "offline" and detail.config["models"] == "tiny"
    assert result["stopped_because"] == "reached the step limit (1)" and len(detail.iterations_detail) == 2


def test_studio_session_pauses_for_a_reply_and_takes_it_through_the_server_checkpointer(arpo_home, monkeypatch):
    from langgraph.types import Command

    from arpo.tools.model_stack import build_model_stack

    monkeypatch.delenv("ARPO_BRAIN", raising=False)
    module, _ = load_graph(dict(langgraph_graphs())["session"])
    studio = module.build_studio_graph(models=build_model_stack("tiny"), session=True).compile(checkpointer=InMemorySaver())
    thread = {"configurable": {"thread_id": "studio-session"}}

    studio.invoke({"image": str(SAMPLE_IMAGE), "initial_prompt": "a cat"}, thread, context={"models": "tiny"})
    [paused] = studio.get_state(thread, subgraphs=True).interrupts
    assert paused.value["iteration"] == 0 and paused.value["prompt"] == "a cat"

    studio.invoke(Command(resume={"action": "edit", "text": "a cat on a mat"}), thread, context={"models": "tiny"})
    [paused] = studio.get_state(thread, subgraphs=True).interrupts
    assert paused.value["iteration"] == 1 and paused.value["prompt"] == "a cat on a mat"

    result = studio.invoke(Command(resume={"action": "stop"}), thread, context={"models": "tiny"})
    detail = History.open().get_run(result["run_id"])
    assert detail.kind == "session" and detail.status == "finished"
    assert [t.action for t in History.open().session_turns(detail.id)] == ["edit", "stop"]
