"""Agent mode (`--agent`): the LLM drives the run through function-calling tools.

Every test talks to the scripted OpenAI-compatible server over real HTTP: the agent's requests (those
offering tools) take the replies queued with `enqueue_agent`, in order, and every other request (the
VLM's comparisons, the proposer's phrases) gets the default responder's answer. Tiny models; with the
prompt "a cat" and the sample image, greedy selection keeps "centered composition" and nothing else
from PHRASES, which the proposer is given as its pool.
"""

from __future__ import annotations

import json

import pytest
from cli_harness import SAMPLE_IMAGE, run_arpo
from fixtures_brain import scripted_backend

from arpo.core.errors import BrainError
from arpo.core.run_config import BrainChoice, RunConfig
from arpo.graphs.batch import run_batch
from arpo.graphs.human_turn import HumanTurn
from arpo.graphs.invocation import build_context, execute_run, load_run, start_run
from arpo.graphs.session_driver import SessionDriver
from arpo.storage.history import History
from arpo.tools.model_stack import build_model_stack
from arpo.tools.reference_image import load_reference_image
from scripted_server import BrainServer, ScriptedBrain, ScriptedReply
from server_personalities import VllmPersonality

PHRASES = ["centered composition", "golden hour light", "blue sky"]
KEPT = "centered composition"
call = ScriptedReply.tool_call


@pytest.fixture(scope="module")
def tiny_models():
    return build_model_stack("tiny")


@pytest.fixture
def server():
    with BrainServer(ScriptedBrain(phrase_pool=PHRASES, phrases_per_reply=3)) as running:
        yield running


def agent_config(server: BrainServer, **fields) -> RunConfig:
    brain = BrainChoice(provider="vllm", base_url=server.base_url, model="scripted")
    settings = {"models": "tiny", "refine": "none", "vlm": brain, "llm": brain, "steps": 3, "agent": True,
                "initial_prompt": "a cat"} | fields
    return RunConfig(**settings)


def run_agent(server: BrainServer, models, *replies: ScriptedReply, **fields) -> tuple[History, str]:
    """Queue the agent's replies, run an agent run to its end, and return its history and id."""
    server.brain.enqueue_agent(*replies)
    history = History.open()
    config = agent_config(server, **fields)
    handle = start_run(history, config, load_reference_image(SAMPLE_IMAGE), build_context(config, history, models))
    execute_run(handle)
    return history, handle.run_id


def agent_requests(server: BrainServer):
    return server.brain.requests_of_kind("agent")


def steps_of(history: History, run_id: str):
    return [step for step in history.tool_calls(run_id) if step.is_agent_step]


def answers_in(request) -> list[str]:
    """The tool results and user messages a request carries after its opening message."""
    return [message["content"] for message in request.messages[2:] if message["role"] in ("tool", "user")]


# The brain layer


def test_the_backend_sends_tools_and_returns_the_calls_with_their_record(server):
    backend = scripted_backend(server)
    server.brain.enqueue_agent(ScriptedReply.tool_calls(("select", {"phrases": ["blue sky"]}), ("finish", "")))
    tools = [{"type": "function", "function": {"name": "select", "parameters": {"type": "object"}}}]

    reply = backend.complete([{"role": "user", "content": "go"}], role="agent", tools=tools, tool_choice="auto")

    assert [(c.name, c.arguments) for c in reply.tool_calls] == [("select", '{"phrases": ["blue sky"]}'), ("finish", "")]
    assert reply.text == "" and reply.finish_reason == "tool_calls", "calls without words are no empty reply"
    assert all(c.id for c in reply.tool_calls)
    (request,) = server.requests
    assert request.body["tools"] == tools and request.body["tool_choice"] == "auto"
    (record,) = backend.take_calls()
    assert (record.role, record.ok, record.finish_reason, record.attempts) == ("agent", True, "tool_calls", 1)


def test_vllm_without_auto_tool_choice_is_one_line_that_names_the_flags():
    tools = [{"type": "function", "function": {"name": "finish", "parameters": {"type": "object"}}}]
    with BrainServer(ScriptedBrain(personality=VllmPersonality())) as plain:
        backend = scripted_backend(plain, max_attempts=3)
        with pytest.raises(BrainError) as caught:
            backend.complete([{"role": "user", "content": "go"}], role="agent", tools=tools, tool_choice="auto")
        assert len(plain.requests) == 1, "a refusal of tools is not retried"
    message = str(caught.value)
    assert "\n" not in message and "--enable-auto-tool-choice --tool-call-parser hermes" in message
    assert '"auto" tool choice requires' in message, "the server's own words are quoted"

    with BrainServer(ScriptedBrain(personality=VllmPersonality(auto_tool_choice=True))) as enabled:
        reply = scripted_backend(enabled).complete([{"role": "user", "content": "go"}], role="agent", tools=tools)
    assert [c.name for c in reply.tool_calls] == ["finish"]


# Whole runs


def test_an_agent_generates_proposes_selects_and_finishes(server, tiny_models):
    history, run_id = run_agent(
        server, tiny_models,
        call("generate_and_compare"), call("propose_phrases"), call("select"), call("generate_and_compare"),
        call("finish", {"reason": "the composition is right"}),
    )

    detail = history.get_run(run_id)
    assert (detail.status, detail.stopped_because) == ("finished", "the agent finished: the composition is right")
    first, second = detail.iterations_detail
    assert [c.phrase for c in first.candidates if c.selected] == [KEPT]
    assert {c.phrase for c in first.candidates} == set(PHRASES), "the proposal's candidates were judged on iteration 0"
    assert second.prompt == f"a cat, {KEPT}"
    assert detail.best_prompt == max((first, second), key=lambda it: it.clip_i).prompt
    steps = steps_of(history, run_id)
    assert [s.tool for s in steps] == ["generate_and_compare", "propose_phrases", "select", "generate_and_compare", "finish"]
    assert all(s.caller == "agent" and s.error is None for s in steps)
    assert steps[2].kept == [KEPT] and steps[3].iteration_index == 1 and steps[3].outcome["iteration"] == 1
    assert steps[0].outcome["differences"], "the render was compared with the VLM"
    agent_calls = [c for c in history.brain_calls(run_id) if c.role == "agent"]
    assert len(agent_calls) == 5 and {c.finish_reason for c in agent_calls} == {"tool_calls"}
    # Each request carries the answers to the calls before it.
    requests = agent_requests(server)
    first_call = requests[1].messages[2]["tool_calls"][0]["id"]
    assert requests[1].messages[3] == {"role": "tool", "tool_call_id": first_call, "content": requests[1].messages[3]["content"]}
    assert json.loads(requests[3].messages[-1]["content"])["kept"] == [KEPT]


def test_unknown_tools_bad_arguments_and_words_get_their_error_back_and_the_run_goes_on(server, tiny_models):
    history, run_id = run_agent(
        server, tiny_models,
        call("paint", {"colour": "red"}), call("generate_and_compare"),
        call("select", '{"phrases": ["blue sky"'), call("propose_phrases"),
        call("select", {"phrasez": ["blue sky"]}), call("select"),
        ScriptedReply.text("I believe the prompt is fine now."), call("finish"),
    )

    requests = agent_requests(server)
    assert len(requests) == 8
    assert "unknown tool 'paint'" in answers_in(requests[1])[-1]
    assert "not valid JSON" in answers_in(requests[3])[-1]
    assert "phrasez: Extra inputs are not permitted" in answers_in(requests[5])[-1]
    assert "called no tool" in answers_in(requests[7])[-1] and requests[7].messages[-1]["role"] == "user"
    detail = history.get_run(run_id)
    assert detail.stopped_because == "the agent finished"
    steps = steps_of(history, run_id)
    assert [s.tool for s in steps] == ["unknown_tool", "generate_and_compare", "select", "propose_phrases",
                                       "select", "select", "no_tool_call", "finish"]
    assert steps[0].arguments["name"] == "paint" and steps[2].arguments["arguments"] == '{"phrases": ["blue sky"'
    assert [bool(s.error) for s in steps] == [True, False, True, False, True, False, True, False]
    assert steps[5].kept == [KEPT], "a good call after a bad one still runs"
    flagged = [c for c in history.brain_calls(run_id) if c.role == "agent" and not c.ok]
    assert len(flagged) == 4, "each reply of which nothing could run is marked unusable"


def test_three_unusable_replies_in_a_row_hand_the_run_to_the_fixed_loop(capsys, arpo_home):
    brain = ScriptedBrain(phrase_pool=PHRASES, phrases_per_reply=3)
    brain.enqueue_agent(ScriptedReply.text("Let me think."), call("paint"), call("edit_prompt", {}))
    with BrainServer(brain) as server:
        outcome = run_arpo(capsys, "invert", SAMPLE_IMAGE, "--models", "tiny", "--brain", "vllm", "--base-url",
                           server.base_url, "--init-prompt", "a cat", "--steps", "1", "--agent", "--json")
    assert outcome.exit_code == 0, outcome.stderr
    notices = [line for line in outcome.stderr.splitlines() if "gave up" in line]
    assert len(notices) == 1 and "the fixed loop goes on from here" in notices[0]
    kinds = [request.kind for request in server.requests]
    assert kinds.count("agent") == 3, "the agent is not asked again"
    assert "phrases" in kinds[kinds.index("agent") + 3:], "the fixed loop proposes after the hand-over"
    result = outcome.json()
    assert [step["tool"] for step in result["agent_steps"]] == ["no_tool_call", "unknown_tool", "edit_prompt", "fallback"]
    assert "prompt: Field required" in result["agent_steps"][2]["error"]
    assert [c["phrase"] for c in result["iterations"][0]["candidates"] if c["selected"]] == [KEPT]
    assert result["stopped_because"] == "reached the step limit (1)", "the fixed loop ended the run"

    shown = run_arpo(capsys, "history", result["run_id"])
    assert "agent: fallback(): the agent gave up after 3 unusable replies" in shown.stdout
    assert "agent: unknown_tool(" in shown.stdout


def test_the_brain_token_budget_stops_the_agent_before_its_calls_run(server, tiny_models):
    history, run_id = run_agent(server, tiny_models, call("propose_phrases"), max_brain_tokens=10)

    detail = history.get_run(run_id)
    assert detail.status == "finished" and detail.stopped_because.startswith("reached the brain-token budget (10 tokens")
    assert len(agent_requests(server)) == 1 and not server.brain.requests_of_kind("phrases")
    (step,) = steps_of(history, run_id)
    assert (step.tool, step.error) == ("propose_phrases", f"not run: {detail.stopped_because}")


def test_the_step_limit_ends_the_run_at_its_last_render(server, tiny_models):
    history, run_id = run_agent(
        server, tiny_models, call("select", {"phrases": [KEPT]}), call("generate_and_compare"), call("propose_phrases"),
        steps=1,
    )

    detail = history.get_run(run_id)
    assert (detail.status, detail.stopped_because) == ("finished", "reached the step limit (1)")
    assert [it.prompt for it in detail.iterations_detail] == ["a cat", f"a cat, {KEPT}"]
    assert len(agent_requests(server)) == 2 and server.brain.agent_pending == 1
    assert not server.brain.requests_of_kind("comparison"), "the last render is not compared: nothing follows it"


def test_an_agent_that_never_renders_runs_out_of_turns(server, tiny_models):
    history, run_id = run_agent(server, tiny_models, *[call("generate_and_compare")] * 12, steps=1)

    detail = history.get_run(run_id)
    assert detail.stopped_because == "the agent used all its 10 turns (5 per allowed generation)"
    assert len(agent_requests(server)) == 10 and len(server.brain.requests_of_kind("comparison")) == 1
    assert [it.index for it in detail.iterations_detail] == [0]


def test_the_time_budget_stops_the_agent_cleanly(server, tiny_models):
    slow = ScriptedReply.delay(1.5, call("generate_and_compare"))
    history, run_id = run_agent(server, tiny_models, slow, slow, max_seconds=1.0)

    detail = history.get_run(run_id)
    assert detail.status == "finished" and detail.stopped_because == "reached the time budget (1 s)"
    assert len(agent_requests(server)) <= 1, "never asked once the time is spent"


def test_a_finish_with_an_unrendered_prompt_renders_it_first(server, tiny_models):
    history, run_id = run_agent(server, tiny_models, call("edit_prompt", {"prompt": "a cat, blue sky"}), call("finish"))

    detail = history.get_run(run_id)
    assert [it.prompt for it in detail.iterations_detail] == ["a cat", "a cat, blue sky"]
    assert detail.stopped_because == "the agent finished", "the render keeps the agent's reason"


def test_an_edit_past_the_token_budget_is_refused(server, tiny_models):
    long_prompt = ", ".join(["a very detailed tabby cat"] * 20)
    history, run_id = run_agent(server, tiny_models, call("edit_prompt", {"prompt": long_prompt}), call("finish"))

    (edit, _finish) = steps_of(history, run_id)
    assert "tokens and the model reads only 75" in edit.error
    assert "shorten it" in answers_in(agent_requests(server)[1])[-1]
    assert [it.prompt for it in history.get_run(run_id).iterations_detail] == ["a cat"]


def test_a_failed_agent_run_resumes_with_its_conversation_and_state(server, tiny_models):
    server.brain.enqueue_agent(call("edit_prompt", {"prompt": "a cat, blue sky"}), ScriptedReply.status(400, "malformed request"))
    history = History.open()
    config = agent_config(server)
    handle = start_run(history, config, load_reference_image(SAMPLE_IMAGE), build_context(config, history, tiny_models))
    with pytest.raises(BrainError, match="request rejected"):
        execute_run(handle)
    assert history.get_run(handle.run_id).status == "failed"

    server.brain.enqueue_agent(call("generate_and_compare"), call("finish"))
    execute_run(load_run(history, handle.run_id, tiny_models))

    detail = history.get_run(handle.run_id)
    assert detail.status == "finished" and [it.prompt for it in detail.iterations_detail] == ["a cat", "a cat, blue sky"]
    resumed = agent_requests(server)[2]
    assert "a cat, blue sky" in answers_in(resumed)[0], "the edit's result came back from the checkpoint"
    assert [s.tool for s in steps_of(history, handle.run_id)] == ["edit_prompt", "generate_and_compare", "finish"]


def test_a_session_runs_the_agent_then_asks_the_person(server, tiny_models):
    server.brain.enqueue_agent(call("select", {"phrases": [KEPT]}), call("finish", {"reason": "over to you"}))
    driver = SessionDriver(History.open(), tiny_models)

    view = driver.start(load_reference_image(SAMPLE_IMAGE), agent_config(server))

    assert view.pause["iteration"] == 1 and view.pause["prompt"] == f"a cat, {KEPT}", "its last prompt was rendered"
    assert view.pause["notice"] == "the agent finished: over to you"
    view = driver.reply(view.run_id, HumanTurn(action="continue"))
    assert view.pause is not None and len(agent_requests(server)) == 2, "the person's rounds are the fixed loop's"
    assert server.brain.requests_of_kind("phrases")
    view = driver.reply(view.run_id, HumanTurn(action="stop"))
    assert view.finished and view.detail.stopped_because == "stopped by the person"


def test_a_batch_runs_its_items_in_agent_mode(server, tiny_models, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    (images / "cat.jpg").write_bytes(SAMPLE_IMAGE.read_bytes())
    history = History.open()

    report = run_batch(images, agent_config(server), models=tiny_models, history=history)

    (item,) = report.items
    assert item.status == "finished"
    assert [s.tool for s in steps_of(history, item.run_id)] == ["finish"]
    assert history.get_run(item.run_id).stopped_because == "the agent finished: the scripted agent has nothing more to do"


def test_agent_mode_needs_an_llm_that_calls_tools(capsys):
    offline = run_arpo(capsys, "invert", SAMPLE_IMAGE, "--models", "tiny", "--brain", "offline", "--agent")
    assert offline.exit_code == 2 and offline.stderr.strip().splitlines()[-1].endswith(
        "--agent needs an LLM brain that calls tools; set --llm-brain (or --brain) to openai or vllm")

    with BrainServer(ScriptedBrain(personality=VllmPersonality())) as vllm:
        refused = run_arpo(capsys, "invert", SAMPLE_IMAGE, "--models", "tiny", "--brain", "vllm", "--base-url",
                           vllm.base_url, "--init-prompt", "a cat", "--agent")
    last = refused.stderr.strip().splitlines()[-1]
    assert refused.exit_code == 3 and "--enable-auto-tool-choice --tool-call-parser hermes" in last


def test_agent_mode_does_not_combine_with_a_single_inversion_method(capsys):
    outcome = run_arpo(capsys, "invert", SAMPLE_IMAGE, "--models", "tiny", "--method", "pez", "--agent")
    assert outcome.exit_code == 2
    assert outcome.stderr.strip().splitlines()[-1].endswith("--agent lets the LLM drive the loop; it does not combine with --method pez")
