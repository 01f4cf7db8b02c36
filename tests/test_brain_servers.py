"""ChatBackend against server personalities: negotiated structured output, errors judged from the
reply body, bounded and reproducible requests, cancelled timeouts, interruptible waits."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import openai
import pytest
from fixtures_brain import scripted_backend

from arpo.agents import backend as backend_module
from arpo.agents.backend import ROLE_MAX_TOKENS, BackendConfig, ChatBackend, FormatMemory
from arpo.agents.image_parts import user_message
from scripted_server import BrainServer, ScriptedBrain, ScriptedReply
from server_personalities import (
    LLAMA_CPP_LIST_REFUSAL,
    BabblerPersonality,
    LlamaCppPersonality,
    OllamaPersonality,
    VllmPersonality,
)
from arpo.core.errors import BrainError, InvalidInputError

SCHEMA = {"type": "object", "properties": {"phrases": {"type": "array", "items": {"type": "string"}}},
          "required": ["phrases"], "additionalProperties": False}
ASK_PHRASES = {"role": "proposer", "json_schema": SCHEMA, "schema_name": "candidate_phrases"}
PROPOSAL = [user_message('List candidate phrases as {"phrases": [...]}.')]


@pytest.fixture
def serve():
    """Start a scripted server with the given personality; every one is stopped after the test."""
    servers = []

    def start(personality="openai", **options) -> BrainServer:
        server = BrainServer(ScriptedBrain(personality=personality, **options)).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def test_llama_cpp_500_on_json_schema_falls_back_to_json_object_within_one_attempt(serve):
    server = serve(LlamaCppPersonality())
    backend = scripted_backend(server, max_attempts=5)

    first = backend.complete(PROPOSAL, **ASK_PHRASES)
    second = backend.complete(PROPOSAL, **ASK_PHRASES)

    assert first.attempts == 1 and first.response_format == "json_object"
    assert '"phrases"' in first.text
    formats = [(r.response_format or {}).get("type") for r in server.requests]
    assert formats == ["json_schema", "json_object", "json_object"], "refused once, remembered after"
    refused, answered, again = backend.take_calls()
    assert (refused.status_code, refused.ok, refused.response_format) == (500, False, "json_schema")
    assert "Input should be 'text' or 'json_object'" in refused.error
    assert (answered.ok, answered.attempts, again.attempts) == (True, 1, 1)


def test_a_refused_json_object_falls_back_to_plain_text(serve):
    server = serve()
    server.enqueue(ScriptedReply.schema_rejected(),
                   ScriptedReply.status(400, "response_format json_object is not supported"),
                   ScriptedReply.text("golden hour light\nrim lighting"))
    backend = scripted_backend(server)

    reply = backend.complete(PROPOSAL, **ASK_PHRASES)

    assert reply.response_format == "text" and reply.attempts == 1
    assert server.requests[-1].response_format is None
    assert backend.complete(PROPOSAL, **ASK_PHRASES).response_format == "text", "nothing refused is asked again"
    assert len(server.requests) == 4


def test_backends_on_one_server_and_model_share_what_was_refused(serve):
    server = serve(LlamaCppPersonality())
    memory = FormatMemory()
    proposer = scripted_backend(server)
    splitter = ChatBackend(proposer.config, memory)
    proposer = ChatBackend(proposer.config, memory)

    proposer.complete(PROPOSAL, **ASK_PHRASES)
    splitter.complete(PROPOSAL, **ASK_PHRASES)

    assert [(r.response_format or {}).get("type") for r in server.requests] == [
        "json_schema", "json_object", "json_object"]
    assert [record.response_format for record in splitter.take_calls()] == ["json_object"]


@pytest.mark.parametrize("mode, sent", [("off", None), ("json-object", {"type": "json_object"})])
def test_fixed_structured_output_modes(serve, mode, sent):
    server = serve()
    backend = scripted_backend(server, structured_output=mode)
    backend.complete(PROPOSAL, **ASK_PHRASES)
    assert server.requests[0].response_format == sent


def test_a_fixed_json_schema_mode_refused_fails_at_once_quoting_the_server(serve):
    server = serve(LlamaCppPersonality())
    backend = scripted_backend(server, structured_output="json-schema", max_attempts=5)

    with pytest.raises(BrainError) as caught:
        backend.complete(PROPOSAL, **ASK_PHRASES)

    message = str(caught.value)
    assert "refused response_format json_schema" in message
    assert "response_format.type: Input should be 'text' or 'json_object'" in message
    assert "\n" not in message
    assert len(server.requests) == 1


def test_unknown_structured_output_mode_is_refused():
    with pytest.raises(InvalidInputError, match="unknown structured output 'xml'"):
        BackendConfig(provider="vllm", model="m", base_url=None, api_key="k", structured_output="xml")


def test_text_only_messages_are_plain_strings_and_image_messages_parts():
    assert user_message("a", "b") == {"role": "user", "content": "a\n\nb"}
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    assert user_message("look", image)["content"] == [{"type": "text", "text": "look"}, image]


def test_list_content_refused_by_a_chat_template_is_permanent_and_quoted(serve):
    server = serve(LlamaCppPersonality(list_content="refuse"))
    backend = scripted_backend(server, max_attempts=5)
    listed = [{"role": "user", "content": [{"type": "text", "text": "hello"}]}]

    with pytest.raises(BrainError, match=r"request failed \(500\): can only concatenate str"):
        backend.complete(listed, role="differ")

    assert len(server.requests) == 1, "a 500 whose body is a type error is not retried"
    backend.complete([user_message("hello")], role="differ")  # a plain string passes
    assert server.requests[1].body["messages"][0]["content"] == "hello"
    assert LLAMA_CPP_LIST_REFUSAL in backend.take_calls()[0].error


def test_a_plain_500_is_transient(serve):
    server = serve()
    server.enqueue(ScriptedReply.status(500), ScriptedReply.text("ok now"))
    assert scripted_backend(server).complete(PROPOSAL, role="differ").attempts == 2


@pytest.mark.parametrize("status", [502, 503, 504])
def test_gateway_errors_are_transient(serve, status):
    server = serve()
    server.enqueue(ScriptedReply.status(status), ScriptedReply.text("ok now"))
    assert scripted_backend(server).complete(PROPOSAL, role="differ").text == "ok now"


def test_attempt_count_excludes_format_fallback_and_every_request_is_recorded(serve):
    server = serve()
    server.enqueue(ScriptedReply.schema_rejected(), *[ScriptedReply.status(503)] * 5)
    backend = scripted_backend(server, max_attempts=5)

    with pytest.raises(BrainError, match=r"gave up after 5 attempts: 503 server error: The server is overloaded"):
        backend.complete(PROPOSAL, **ASK_PHRASES)

    records = backend.take_calls()
    assert len(records) == len(server.requests) == 6
    assert [r.attempts for r in records] == [1, 1, 2, 3, 4, 5]
    assert [r.status_code for r in records] == [400, 503, 503, 503, 503, 503]
    assert not any(r.ok for r in records) and all(r.error for r in records)


def test_vllm_flat_error_body_is_quoted(serve):
    server = serve(VllmPersonality(images_per_prompt=1))
    backend = scripted_backend(server)
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}

    with pytest.raises(BrainError, match=r"rejected \(400\): At most 1 image\(s\) may be provided"):
        backend.complete([user_message("compare", image, image)], role="comparer")


def test_vllm_context_overflow_names_the_limit(serve):
    server = serve(VllmPersonality(context_tokens=200))
    backend = scripted_backend(server, max_tokens=500)
    with pytest.raises(BrainError, match="maximum context length is 200 tokens"):
        backend.complete(PROPOSAL, role="differ")


def test_ollama_missing_model_is_a_404_with_its_advice(serve):
    server = serve(OllamaPersonality(models=("qwen2.5:1.5b",)))
    backend = scripted_backend(server, model="llama3")
    with pytest.raises(BrainError, match='not found at .*model "llama3" not found, try pulling it first'):
        backend.complete(PROPOSAL, role="differ")
    assert len(server.requests) == 1


def test_ollama_honours_json_schema(serve):
    server = serve(OllamaPersonality())
    reply = scripted_backend(server).complete(PROPOSAL, **ASK_PHRASES)
    assert reply.response_format == "json_schema" and len(server.requests) == 1


def test_requests_carry_role_budget_temperature_and_seed(serve):
    server = serve()
    scripted_backend(server).complete(PROPOSAL, **ASK_PHRASES)
    scripted_backend(server, max_tokens=77, temperature=0.0, seed=42).complete(PROPOSAL, role="comparer")
    first, second = (request.body for request in server.requests)
    assert (first["max_tokens"], first["temperature"], first["seed"]) == (ROLE_MAX_TOKENS["proposer"], 0.2, 0)
    assert (second["max_tokens"], second["temperature"], second["seed"]) == (77, 0.0, 42)


def test_a_babbling_model_stops_at_max_tokens(serve):
    server = serve(BabblerPersonality())
    backend = scripted_backend(server, max_tokens=120)

    reply = backend.complete(PROPOSAL, **ASK_PHRASES)

    assert reply.finish_reason == "length"
    assert len(reply.text) == 120 * 4
    assert reply.text.lstrip().startswith('{"phrases"')


def test_a_babbling_model_asked_without_max_tokens_runs_into_the_timeout(serve):
    server = serve(BabblerPersonality())
    client = openai.OpenAI(base_url=server.base_url, api_key="k", max_retries=0, timeout=0.5)
    with pytest.raises(openai.APITimeoutError):
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "describe"}])


def test_a_timed_out_request_is_cancelled_on_the_server(serve):
    server = serve()
    server.enqueue(ScriptedReply.delay(5.0))
    backend = scripted_backend(server, timeout_s=0.4, max_attempts=1)

    started = time.monotonic()
    with pytest.raises(BrainError, match="gave up after 1 attempts: timed out after 0.4 s"):
        backend.complete(PROPOSAL, role="differ")
    assert time.monotonic() - started < 2

    [request] = server.requests
    deadline = time.monotonic() + 2
    while request.disconnected_at is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert request.disconnected_at is not None, "the server never saw the client hang up"
    assert request.disconnected_at - request.received_at < 1.5
    [record] = backend.take_calls()
    assert (record.ok, record.status_code) == (False, None) and "timed out" in record.error


def test_ctrl_c_stops_a_call_waiting_on_another_thread(serve):
    server = serve()
    server.enqueue(ScriptedReply.delay(10.0))
    backend = scripted_backend(server, timeout_s=30)
    outcome: dict[str, BaseException] = {}

    def call() -> None:
        try:
            backend.complete(PROPOSAL, role="describer")
        except BaseException as exc:  # noqa: BLE001 - the test wants to see exactly what escaped
            outcome["raised"] = exc

    worker = threading.Thread(target=call)
    worker.start()
    time.sleep(0.3)
    stopped_at = time.monotonic()
    backend_module._INTERRUPTS.bump()  # what the SIGINT handler does before KeyboardInterrupt
    worker.join(timeout=2)

    assert not worker.is_alive() and time.monotonic() - stopped_at < 1
    assert isinstance(outcome.get("raised"), KeyboardInterrupt)
    [record] = backend.take_calls()
    assert record.error == "interrupted (Ctrl-C)"


def test_a_fastapi_422_detail_list_is_read_and_names_the_format(serve):
    server = serve()
    detail = [{"loc": ["body", "response_format", "type"], "msg": "Input should be 'text'", "type": "literal_error"}]
    server.enqueue(ScriptedReply.status(422, {"detail": detail}))
    backend = scripted_backend(server)

    reply = backend.complete(PROPOSAL, **ASK_PHRASES)

    assert reply.response_format == "json_object"
    refused = backend.take_calls()[0]
    assert refused.error == "response_format json_schema refused: 422: response_format.type: Input should be 'text'"


def test_scripted_server_personality_from_the_command_line():
    import json
    import subprocess
    import sys
    import urllib.error
    import urllib.request

    script = Path(__file__).with_name("scripted_server.py")
    process = subprocess.Popen([sys.executable, str(script), "--personality", "llama-cpp"],
                               stdout=subprocess.PIPE, text=True)
    try:
        base_url = process.stdout.readline().strip()
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}],
                "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}}
        request = urllib.request.Request(f"{base_url}/chat/completions", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(request, timeout=5)
        assert caught.value.code == 500
        assert "Input should be 'text' or 'json_object'" in json.load(caught.value)["error"]["message"]
    finally:
        process.terminate()
        process.wait(timeout=5)


def test_a_reasoning_model_refusing_max_tokens_and_temperature_gets_what_it_accepts(serve):
    server = serve()
    server.enqueue(
        ScriptedReply.status(400, {"error": {
            "message": "Unsupported parameter: 'max_tokens' is not supported with this model. "
                       "Use 'max_completion_tokens' instead.",
            "type": "invalid_request_error", "param": "max_tokens", "code": "unsupported_parameter"}}),
        ScriptedReply.status(400, {"error": {
            "message": "Unsupported value: 'temperature' does not support 0.2 with this model. "
                       "Only the default (1) value is supported.",
            "type": "invalid_request_error", "param": "temperature", "code": "unsupported_value"}}),
    )
    backend = scripted_backend(server, provider="openai", model="o-test", max_attempts=1)

    first = backend.complete(PROPOSAL, role="proposer")
    backend.complete(PROPOSAL, role="proposer")

    assert first.attempts == 1
    sent = [request.body for request in server.requests]
    assert "max_tokens" in sent[0] and "temperature" in sent[1] and "max_tokens" not in sent[1]
    for body in sent[2:]:  # the answered request and the next call
        assert body["max_completion_tokens"] == ROLE_MAX_TOKENS["proposer"]
        assert "max_tokens" not in body and "temperature" not in body and body["seed"] == 0
    assert [r.error.split(" refused")[0] for r in backend.take_calls() if not r.ok] == [
        "parameter max_tokens", "parameter temperature"]


# A text-only model in the VLM role: llama-cpp-python drops what it cannot read, and arpo notices.

def _pictures():
    from PIL import Image

    return Image.new("RGB", (32, 32), (200, 120, 40)), Image.new("RGB", (32, 32), (40, 40, 40))


def test_a_text_only_model_asked_to_compare_images_stops_the_call_naming_the_fix(serve):
    from arpo.agents.roles import Comparer

    server = serve(LlamaCppPersonality())
    backend = scripted_backend(server, model="gemma-3-270m", max_attempts=5)

    with pytest.raises(BrainError) as caught:
        Comparer(backend).compare(*_pictures())

    message = str(caught.value)
    assert message.startswith(f"comparer brain gemma-3-270m at {server.base_url} never saw the request: "
                              "the server counted 7 prompt tokens where its text alone needs ")
    assert "serve a vision model there, or use --vlm-brain offline (with --framework vanilla)" in message
    assert "\n" not in message
    assert len(server.requests) == 1, "a dropped message is dropped again: not retried"
    [record] = backend.take_calls()
    assert (record.ok, record.status_code, record.prompt_tokens, record.error) == (False, 200, 7, message)
    assert record.completion_tokens > 0, "the model babbled at an empty prompt; its count is kept"


def test_a_vision_model_on_the_same_server_reads_its_images(serve):
    from arpo.agents.roles import Comparer

    server = serve(LlamaCppPersonality(vision_models=("moondream2",)))
    backend = scripted_backend(server, model="moondream2")

    differences = Comparer(backend).compare(*_pictures())

    assert differences.startswith("Image 1")
    [record] = backend.take_calls()
    assert record.ok and record.prompt_tokens > 170, "text and two images counted"


def test_describing_with_a_text_only_model_stops_too(serve):
    from arpo.agents.roles import Describer

    server = serve(LlamaCppPersonality())
    backend = scripted_backend(server, model="gemma-3-270m")
    with pytest.raises(BrainError, match="describer brain gemma-3-270m at .* never saw the request"):
        Describer(backend).describe(_pictures()[0])


def test_text_sent_as_parts_and_dropped_says_to_send_a_string(serve):
    server = serve(LlamaCppPersonality())
    backend = scripted_backend(server)
    listed = [{"role": "user", "content": [{"type": "text", "text": "Compare these two descriptions. " * 8}]}]
    with pytest.raises(BrainError, match="cannot read content sent as a list of parts, send it as a plain string"):
        backend.complete(listed, role="differ")


@pytest.mark.parametrize("chars_per_token, seen", [(2, True), (5, True), (7, False), (40, False)])
def test_a_prompt_counted_below_one_token_per_six_characters_was_not_read(serve, chars_per_token, seen):
    """A tokenizer as thrifty as five characters a token passes; a count below characters / 6 fails."""
    server = serve()
    text = "Describe the lighting, colours and composition of this picture in detail. " * 4
    server.brain.prompt_tokens = lambda body: len(text) // chars_per_token
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    backend = scripted_backend(server)

    if seen:
        assert backend.complete([user_message(text, image)], role="describer").text
    else:
        with pytest.raises(BrainError, match="never saw the request"):
            backend.complete([user_message(text, image)], role="describer")


@pytest.mark.parametrize("reported", [0, 3])
def test_plain_strings_and_servers_that_do_not_count_are_not_judged(serve, reported):
    server = serve()
    server.brain.prompt_tokens = lambda body: reported
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    long_text = "Describe the lighting and composition of this picture. " * 6
    backend = scripted_backend(server)
    backend.complete([user_message(long_text)], role="differ")  # a string is never dropped
    if reported == 0:  # 0: the server does not count at all
        backend.complete([user_message(long_text, image)], role="describer")


def test_a_llama_cpp_template_refusing_image_parts_is_permanent_and_quoted(serve):
    from arpo.agents.roles import Comparer

    server = serve(LlamaCppPersonality(list_content="refuse"))
    backend = scripted_backend(server, max_attempts=5)
    with pytest.raises(BrainError, match=r"request failed \(500\): can only concatenate str"):
        Comparer(backend).compare(*_pictures())
    assert len(server.requests) == 1
