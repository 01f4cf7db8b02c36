"""The ARPO graph invoked from Python, with a CLIP scorer whose text scores are known in advance,
so the stop rule and the prompt's growth can be checked exactly."""

import pytest
from cli_harness import SAMPLE_IMAGE

from arpo.agents.scripted_server import BrainServer, ScriptedBrain
from arpo.graphs.invocation import build_context, execute_run, start_run
from arpo.graphs.run_config import BrainChoice, RunConfig
from arpo.storage.history import History
from arpo.tools.model_stack import build_model_stack
from arpo.tools.reference_image import load_reference_image

POOL = ["good light", "bad framing", "good colour", "bad mood", "bad crop"]


class WordCountingClip:
    """Wraps the tiny CLIP scorer; text similarity is +1 per 'good' and -0.5 per 'bad'."""

    def __init__(self, clip):
        self._clip = clip

    def __getattr__(self, name):
        return getattr(self._clip, name)

    def text_image_similarity(self, image_embedding, texts):
        self._clip.text_forward_passes += 1
        return [text.count("good") - 0.5 * text.count("bad") for text in texts]


@pytest.fixture
def stack():
    models = build_model_stack("tiny")
    models.clip = WordCountingClip(models.clip)
    return models


def run_loop(stack, server, steps):
    history = History.open()
    config = RunConfig(
        models="tiny",
        vlm=BrainChoice(provider="vllm", base_url=server.base_url),
        llm=BrainChoice(provider="vllm", base_url=server.base_url),
        steps=steps,
        initial_prompt="a cat",
    )
    context = build_context(config, history, models=stack)
    handle = start_run(history, config, load_reference_image(SAMPLE_IMAGE), context)
    updates = []
    execute_run(handle, on_update=lambda node, update: updates.append(node))
    return history.get_run(handle.run_id), updates, context


def test_loop_keeps_what_helps_and_stops_when_nothing_does(stack):
    with BrainServer(ScriptedBrain(phrase_pool=POOL, phrases_per_reply=4)) as server:
        run, nodes, context = run_loop(stack, server, steps=10)
    first, second = run.iterations_detail
    assert first.selected == ["good light", "good colour"]
    assert second.prompt == "a cat, good light, good colour"
    assert [c.phrase for c in second.candidates] == ["bad crop"]  # the only phrase not tried before
    assert second.selected == []
    assert run.stopped_because == "no candidate raised CLIP similarity"
    assert run.last_prompt == second.prompt
    assert nodes == ["initialize", "generate", "compare", "propose", "select",
                     "generate", "compare", "propose", "select", "finish"]
    # Selection's CLIP text forwards: one for the start prompt plus one per round (k candidates -> k + 1).
    selection = [t for t in context.telemetry.timings if t.node == "select"]
    assert [t.clip_text_passes for t in selection] == [5, 2]


def test_step_limit_scores_the_last_prompt_and_stops(stack):
    with BrainServer(ScriptedBrain(phrase_pool=POOL, phrases_per_reply=4)) as server:
        run, nodes, _ = run_loop(stack, server, steps=1)
    assert [it.prompt for it in run.iterations_detail] == ["a cat", "a cat, good light, good colour"]
    assert run.iterations_detail[-1].candidates == []  # the last generation is scored, not extended
    assert run.stopped_because == "reached the step limit (1)"
    assert nodes[-2:] == ["generate", "finish"]
    best = max(run.iterations_detail, key=lambda it: it.clip_i)
    assert run.best_prompt == best.prompt
