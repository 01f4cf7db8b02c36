"""ChatBackend against the scripted HTTP brain: retries, hard failures, schema fallback, records."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import traceback
import urllib.request
from pathlib import Path

import openai
import pytest
from fixtures_brain import TEST_API_KEY, brain_server, scripted_backend  # noqa: F401

from arpo.agents.backend import BackendConfig, ChatBackend
from scripted_server import ScriptedReply
from server_personalities import Generation
from arpo.core.errors import BrainError, InvalidInputError

HELLO = [{"role": "user", "content": "List the differences."}]
SCHEMA = {"type": "object", "properties": {"phrases": {"type": "array", "items": {"type": "string"}}},
          "required": ["phrases"], "additionalProperties": False}


def test_rate_limit_is_retried_until_success(brain_server):
    brain_server.enqueue(ScriptedReply.status(429), ScriptedReply.status(429),
                         ScriptedReply.text("the sky is darker"))
    backend = scripted_backend(brain_server, max_attempts=5)

    reply = backend.complete(HELLO, role="differ")

    assert reply.text == "the sky is darker"
    assert reply.attempts == 3
    assert len(brain_server.requests) == 3
    records = backend.take_calls()
    # One record per request, failed ones included, all of one call.
    assert [(r.attempts, r.ok, r.status_code) for r in records] == [(1, False, 429), (2, False, 429),
                                                                    (3, True, 200)]
    assert len({r.call_id for r in records}) == 1
    # Each retry waited its backoff first (retry_wait_s is 0.01 s here), then asked again.
    for earlier, later in zip(records, records[1:]):
        assert (later.started_at - earlier.started_at).total_seconds() >= earlier.latency_s + 0.01
    assert "429 rate limited: Rate limit reached" in records[0].error and records[2].error is None


@pytest.mark.parametrize("status", [500, 503])
def test_server_errors_are_retried(brain_server, status):
    brain_server.enqueue(ScriptedReply.status(status), ScriptedReply.text("fine now"))
    backend = scripted_backend(brain_server)

    reply = backend.complete(HELLO, role="differ")

    assert (reply.text, reply.attempts) == ("fine now", 2)


def test_gives_up_after_max_attempts_with_reason(brain_server):
    brain_server.enqueue(*[ScriptedReply.status(429)] * 3)
    backend = scripted_backend(brain_server, max_attempts=3)

    with pytest.raises(BrainError, match=r"gave up after 3 attempts: 429 rate limited") as caught:
        backend.complete(HELLO, role="proposer")

    assert "proposer brain scripted-model" in str(caught.value)
    assert len(brain_server.requests) == 3
    records = backend.take_calls()
    assert [r.attempts for r in records] == [1, 2, 3]
    assert all(not r.ok and r.status_code == 429 and "429" in r.error for r in records)


def test_insufficient_quota_fails_at_once(brain_server):
    brain_server.enqueue(ScriptedReply.quota_exhausted(), ScriptedReply.text("never reached"))
    backend = scripted_backend(brain_server, max_attempts=5)

    with pytest.raises(BrainError, match="insufficient_quota"):
        backend.complete(HELLO, role="differ")

    assert len(brain_server.requests) == 1


def test_authentication_failure_is_immediate_and_never_shows_the_key(brain_server):
    # The scripted 401 echoes the full key back, as a careless server might.
    brain_server.enqueue(ScriptedReply.status(401))
    backend = scripted_backend(brain_server, provider="openai", model="gpt-4o")

    with pytest.raises(BrainError) as caught:
        backend.complete(HELLO, role="llm")

    message = str(caught.value)
    assert message == "llm brain gpt-4o: authentication failed (check OPENAI_API_KEY)"
    assert TEST_API_KEY not in "".join(traceback.format_exception(caught.value))
    assert len(brain_server.requests) == 1
    [record] = backend.take_calls()
    assert TEST_API_KEY not in record.model_dump_json()
    assert TEST_API_KEY not in repr(backend) and TEST_API_KEY not in repr(backend.config)
    assert TEST_API_KEY not in str(backend.config.safe_description())


def test_authorization_header_carries_the_key(brain_server):
    backend = scripted_backend(brain_server)
    backend.complete(HELLO, role="differ")
    assert brain_server.requests[0].authorization == f"Bearer {TEST_API_KEY}"


def test_bad_request_fails_at_once_with_the_server_reason(brain_server):
    brain_server.enqueue(ScriptedReply.status(400, "image input is not supported by this model"))
    backend = scripted_backend(brain_server)

    with pytest.raises(BrainError, match=r"comparer brain scripted-model: request rejected \(400\): "
                                         r"image input is not supported"):
        backend.complete(HELLO, role="comparer")

    assert len(brain_server.requests) == 1


def test_not_found_names_model_and_url(brain_server):
    brain_server.enqueue(ScriptedReply.status(404))
    backend = scripted_backend(brain_server, model="no-such-model")

    with pytest.raises(BrainError, match=f"no-such-model: not found at {brain_server.base_url}"):
        backend.complete(HELLO, role="differ")


def test_schema_rejection_falls_back_to_json_object_and_remembers(brain_server):
    brain_server.enqueue(ScriptedReply.schema_rejected(), ScriptedReply.text('{"phrases": ["x"]}'))
    backend = scripted_backend(brain_server)

    ask = {"role": "proposer", "json_schema": SCHEMA, "schema_name": "candidate_phrases"}
    first = backend.complete(HELLO, **ask)
    second = backend.complete(HELLO, **ask)

    # The fallback is part of the first attempt, not a retry.
    assert first.text == '{"phrases": ["x"]}' and first.attempts == 1
    assert first.response_format == "json_object"
    sent = brain_server.requests
    assert sent[0].response_format["json_schema"]["name"] == "candidate_phrases"
    assert sent[1].response_format == {"type": "json_object"}
    assert sent[2].response_format == {"type": "json_object"}
    assert second.attempts == 1
    refused, answered, _ = backend.take_calls()
    assert (refused.response_format, refused.status_code, refused.ok) == ("json_schema", 400, False)
    assert "response_format json_schema refused" in refused.error
    assert (answered.response_format, answered.ok, answered.attempts) == ("json_object", True, 1)


def test_schema_is_sent_strict_when_supported(brain_server):
    backend = scripted_backend(brain_server)
    backend.complete(HELLO, role="proposer", json_schema=SCHEMA, schema_name="candidate_phrases")
    body = brain_server.requests[0].body
    assert body["response_format"]["json_schema"] == {"name": "candidate_phrases", "schema": SCHEMA,
                                                      "strict": True}


def test_schema_not_sent_when_config_disables_it(brain_server):
    backend = scripted_backend(brain_server, json_schema_output=False)
    backend.complete(HELLO, role="proposer", json_schema=SCHEMA, schema_name="candidate_phrases")
    assert brain_server.requests[0].response_format is None


def test_timeout_is_retried(brain_server):
    brain_server.enqueue(ScriptedReply.delay(2.0, then=ScriptedReply.text("too late")),
                         ScriptedReply.text("on time"))
    backend = scripted_backend(brain_server, timeout_s=0.3)

    reply = backend.complete(HELLO, role="differ")

    assert (reply.text, reply.attempts) == ("on time", 2)


def test_an_empty_reply_is_asked_again_once(brain_server):
    brain_server.enqueue(ScriptedReply.status(503), ScriptedReply.without_choices(),
                         ScriptedReply.text("finally"))
    backend = scripted_backend(brain_server, max_attempts=5)

    reply = backend.complete(HELLO, role="differ")

    assert (reply.text, reply.attempts) == ("finally", 3)


def test_a_second_empty_reply_fails_for_good_with_the_likely_cause(brain_server):
    brain_server.enqueue(*[ScriptedReply.empty()] * 5)
    backend = scripted_backend(brain_server, max_attempts=5)

    with pytest.raises(BrainError) as caught:
        backend.complete(HELLO, role="differ")

    message = str(caught.value)
    assert len(brain_server.requests) == 2, "an identical request gets the same nothing"
    assert message.startswith("differ brain scripted-model: empty reply to a 5-token prompt (finish_reason stop)")
    assert "chat format" in message and "--chat_format" in message and message.endswith("(asked 2 times)")
    assert "\n" not in message
    records = backend.take_calls()
    assert [(r.ok, r.status_code, r.prompt_tokens, r.completion_tokens, r.finish_reason) for r in records] == [
        (False, 200, 5, 0, "stop")] * 2
    assert records[0].error.startswith("empty reply to a 5-token prompt") and records[1].error == message


def test_an_empty_reply_on_the_last_attempt_gives_up_with_the_hint(brain_server):
    brain_server.enqueue(ScriptedReply.empty())
    backend = scripted_backend(brain_server, max_attempts=1)
    with pytest.raises(BrainError, match=r"gave up after 1 attempts: empty reply to a 5-token prompt .*--jinja"):
        backend.complete(HELLO, role="differ")


def test_an_empty_reply_that_ran_out_of_budget_says_so(brain_server):
    brain_server.enqueue(ScriptedReply.empty(), ScriptedReply.empty())
    brain_server.brain.personality.generate = lambda body, answer: Generation("", "length", 0.0)
    backend = scripted_backend(brain_server, max_tokens=64)
    with pytest.raises(BrainError, match="the whole budget of 64 tokens went before any text"):
        backend.complete(HELLO, role="differ")


def test_unreachable_server_is_retried_then_reported():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    backend = ChatBackend(BackendConfig(
        provider="vllm", model="m", base_url=f"http://127.0.0.1:{port}/v1", api_key="k",
        max_attempts=2, retry_wait_s=0.01, retry_max_wait_s=0.02, timeout_s=2))

    expected = rf"gave up after 2 attempts: cannot connect to http://127.0.0.1:{port}/v1"
    with pytest.raises(BrainError, match=expected):
        backend.complete(HELLO, role="differ")


def test_record_carries_tokens_and_latency(brain_server):
    brain_server.brain.latency_s = 0.1
    backend = scripted_backend(brain_server)
    message = [{"role": "user", "content": "x" * 400}]

    reply = backend.complete(message, role="differ")

    [record] = backend.take_calls()
    assert record.prompt_tokens == 100 == reply.prompt_tokens
    assert (record.status_code, record.finish_reason, record.response_format) == (200, "stop", None)
    assert record.completion_tokens == len(reply.text) // 4 == reply.completion_tokens
    # The record times its request; the reply the whole call (one request here, plus thread hand-offs).
    assert 0.1 <= record.latency_s <= reply.latency_s < record.latency_s + 0.5
    assert (record.role, record.model, record.provider) == ("differ", "scripted-model", "vllm")
    assert backend.take_calls() == []


def test_from_provider_openai_requires_key(monkeypatch):
    with pytest.raises(BrainError, match="^OPENAI_API_KEY is not set; "):
        BackendConfig.from_provider("openai", "gpt-4o")
    monkeypatch.setenv("OPENAI_API_KEY", TEST_API_KEY)
    config = BackendConfig.from_provider("openai", "gpt-4o")
    assert (config.api_key, config.base_url) == (TEST_API_KEY, None)
    assert "api_key" not in config.safe_description()
    assert TEST_API_KEY not in repr(config)


def test_from_provider_vllm_defaults(monkeypatch):
    monkeypatch.delenv("VLLM_API_KEY", raising=False)
    config = BackendConfig.from_provider("vllm", "Qwen/Qwen2.5-VL-7B-Instruct")
    assert (config.base_url, config.api_key) == ("http://127.0.0.1:8000/v1", "EMPTY")
    monkeypatch.setenv("VLLM_API_KEY", "local-secret")
    config = BackendConfig.from_provider("vllm", "m", base_url="http://gpu:9000/v1")
    assert (config.api_key, config.base_url) == ("local-secret", "http://gpu:9000/v1")


@pytest.mark.parametrize("settings", [{"max_attempts": 0}, {"timeout_s": 0}])
def test_impossible_settings_are_refused(settings):
    with pytest.raises(InvalidInputError):
        BackendConfig(provider="vllm", model="m", base_url=None, api_key="k", **settings)


def test_scripted_server_lists_models_to_the_sdk(brain_server):
    client = openai.OpenAI(base_url=brain_server.base_url, api_key="k", max_retries=0)
    assert [model.id for model in client.models.list()] == ["scripted"]
    assert brain_server.requests[0].method == "GET"


def test_scripted_server_runs_as_a_plain_script():
    script = Path(__file__).with_name("scripted_server.py")
    process = subprocess.Popen([sys.executable, str(script), "--latency", "0"],
                               stdout=subprocess.PIPE, text=True)
    try:
        base_url = process.stdout.readline().strip()
        with urllib.request.urlopen(f"{base_url}/models", timeout=5) as response:
            assert json.load(response)["data"][0]["id"] == "scripted"
    finally:
        process.terminate()
        process.wait(timeout=5)
