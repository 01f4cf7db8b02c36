"""The loop benchmark's in-process brain: requests go through ChatBackend and the openai SDK, the replies
fit what each role asked, the latency is paid, and a benchmark run lasts the steps it was given."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from arpo.agents import templates
from arpo.agents.image_parts import image_part, user_message
from arpo.eval import benchmark_brain
from arpo.eval.benchmark_brain import BenchmarkBrain
from arpo.eval.loop_benchmark import MeasuredRun, run_once


@pytest.fixture
def backend():
    backend = BenchmarkBrain(latency_s=0.05, phrases_per_reply=3).backend()
    yield backend
    backend.close()


def test_each_role_gets_the_reply_it_asked_for(backend):
    picture = image_part(Image.new("RGB", (16, 16), (90, 120, 30)))
    comparison = user_message(templates.COMPARISON_PROMPT, "Image 1:", picture, "Image 2:", picture)

    assert backend.complete([comparison], role="comparer").text == benchmark_brain.COMPARISON
    style = user_message(templates.STYLE_DESCRIPTION_PROMPT, picture)
    assert backend.complete([style], role="describer").text == benchmark_brain.STYLE
    content = user_message(templates.CONTENT_DESCRIPTION_PROMPT, picture)
    assert backend.complete([content], role="describer").text == benchmark_brain.CONTENT
    assert backend.complete([user_message("What differs?")], role="differ").text == benchmark_brain.DIFFERENCES

    records = backend.take_calls()
    assert all(record.ok and record.latency_s >= 0.05 for record in records)
    assert [record.provider for record in records] == ["vllm"] * 4


def test_proposals_skip_phrases_the_request_already_mentions(backend):
    first, second, third, fourth = benchmark_brain.PHRASES[:4]
    ask = user_message(f"Current prompt: a cat, {first}\nAlready tried: {third}")

    reply = backend.complete([ask], role="proposer", json_schema={"type": "object"}, schema_name="candidate_phrases")

    assert json.loads(reply.text) == {"phrases": [second, fourth, benchmark_brain.PHRASES[4]]}
    assert reply.response_format == "json_schema" and reply.prompt_tokens > 0


@pytest.mark.parametrize("framework", ["vanilla", "enhanced"])
def test_a_benchmark_run_lasts_every_step_and_waits_on_its_brain(tiny_models, framework):
    timings, wall, candidates = run_once(framework, 0.02, 3, tiny_models)

    assert candidates[:3] == [6, 6, 6]  # no early stop: each step kept a phrase
    asking = [timing for timing in timings if timing.brain_calls]
    assert {"compare", "propose"} <= {timing.node for timing in asking}
    assert all(timing.brain_wait_s >= 0.02 for timing in asking)  # calls at once overlap their waits
    assert 0 < MeasuredRun(timings, wall, candidates).overhead_fraction < 1


@pytest.fixture(scope="module")
def tiny_models():
    from arpo.tools.model_stack import build_model_stack

    return build_model_stack("tiny")
