"""The ARPO graph invoked from Python, with a CLIP scorer whose text scores are known in advance,
so the stop rule and the prompt's growth can be checked exactly."""

from types import SimpleNamespace

import pytest
from cli_harness import SAMPLE_IMAGE

from scripted_server import BrainServer, ScriptedBrain, ScriptedReply
from arpo.core.run_config import BrainChoice, RunConfig
from arpo.graphs import nodes
from arpo.graphs.invocation import build_context, execute_run, start_run
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
        refine="none",
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
    # Phrases rejected against the first prompt are proposed again against the new one.
    assert [c.phrase for c in second.candidates] == ["bad framing", "bad mood", "bad crop"]
    assert second.selected == []
    assert second.proposal.source == "llm" and second.proposal.dropped == []
    assert run.stopped_because == "no candidate raised CLIP similarity"
    assert run.last_prompt == second.prompt
    assert nodes == ["initialize", "generate", "compare", "propose", "select",
                     "generate", "compare", "propose", "select", "finish"]
    # Selection's CLIP text forwards: one per round (k candidates -> k); the start prompt's score is the
    # one its render was given, not measured again.
    selection = [t for t in context.telemetry.timings if t.node == "select"]
    assert [t.clip_text_passes for t in selection] == [4, 3]
    assert first.clip_t == pytest.approx(0.0) and second.clip_t == pytest.approx(2.0)


def test_step_limit_scores_the_last_prompt_and_stops(stack):
    with BrainServer(ScriptedBrain(phrase_pool=POOL, phrases_per_reply=4)) as server:
        run, nodes, _ = run_loop(stack, server, steps=1)
    assert [it.prompt for it in run.iterations_detail] == ["a cat", "a cat, good light, good colour"]
    assert run.iterations_detail[-1].candidates == []  # the last generation is scored, not extended
    assert run.stopped_because == "reached the step limit (1)"
    assert nodes[-2:] == ["generate", "finish"]
    best = max(run.iterations_detail, key=lambda it: it.clip_i)
    assert run.best_prompt == best.prompt


def test_an_unusable_llm_round_falls_back_to_the_phrase_banks(stack):
    placeholder = '{"phrases": ["(none were listed)", "phrase 1"]}'
    with BrainServer(ScriptedBrain(phrase_pool=POOL)) as server:
        # comparison (default answer), proposal, repair: both proposals are placeholders only
        server.enqueue(ScriptedReply(), ScriptedReply.text(placeholder), ScriptedReply.text(placeholder))
        run, _, _ = run_loop(stack, server, steps=1)
    first = run.iterations_detail[0]
    assert first.proposal.source == "offline-fallback"
    assert first.candidates, "the phrase banks proposed instead"
    assert not {c.phrase for c in first.candidates} & set(POOL), "not the LLM's phrases"
    assert [(d.phrase, d.reason) for d in first.proposal.dropped] == [
        ("(none were listed)", "placeholder"), ("phrase 1", "placeholder")] * 2
    assert "offline phrase banks" in first.note
    assert run.stopped_because != "no new candidate phrases were proposed"


def test_tried_phrases_are_kept_out_only_while_the_prompt_is_the_same(stack):
    with BrainServer(ScriptedBrain(phrase_pool=POOL, phrases_per_reply=2)) as server:
        history = History.open()
        config = RunConfig(models="tiny", refine="none", vlm=BrainChoice(provider="vllm", base_url=server.base_url),
                           llm=BrainChoice(provider="vllm", base_url=server.base_url), initial_prompt="a cat")
        context = build_context(config, history, models=stack)
        handle = start_run(history, config, load_reference_image(SAMPLE_IMAGE), context)
        runtime = SimpleNamespace(context=context)
        state = {"run_id": handle.run_id, "iteration": 0, "differences": "", "banned": ["bad mood"],
                 "tried": ["good light", "bad framing"], "tried_against": "a cat"}

        same = nodes.propose({**state, "prompt": "a cat"}, runtime)
        changed = nodes.propose({**state, "prompt": "a cat, good colour"}, runtime)

    assert same["candidates"] == ["good colour", "bad crop"]
    assert same["tried"] == ["good light", "bad framing", "good colour", "bad crop"]
    # A new prompt: the earlier rejections may come back; the ban may not.
    assert changed["candidates"] == ["good light", "bad framing"]
    assert changed["tried"] == ["good light", "bad framing"] and changed["tried_against"] == "a cat, good colour"
    assert all("bad mood" not in c for c in same["candidates"] + changed["candidates"])
