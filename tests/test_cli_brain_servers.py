"""`arpo invert` through the CLI against scripted servers that behave like llama-cpp-python, Ollama,
vLLM and a babbling model; failed requests in the history; Ctrl-C during a brain call."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
from cli_harness import SAMPLE_IMAGE, run_arpo

from scripted_server import BrainServer, ScriptedBrain, ScriptedReply
from server_personalities import (
    BabblerPersonality,
    LlamaCppPersonality,
    OllamaPersonality,
    VllmPersonality,
)

PERSONALITIES = {
    # One llama-cpp-python server with two models (a --config_file): the VLM behind a multimodal chat
    # handler, the LLM text-only, whose chat format drops (or its template refuses) any list of parts.
    "llama-cpp-drops-lists": lambda: LlamaCppPersonality(list_content="drop", vision_models=("scripted-vlm",)),
    "llama-cpp-template-refuses-lists": lambda: LlamaCppPersonality(
        list_content="refuse", vision_models=("scripted-vlm",)),
    "ollama": lambda: OllamaPersonality(models=("scripted-vlm", "scripted-llm")),
    "vllm": lambda: VllmPersonality(),
    "babbler": lambda: BabblerPersonality(),
}


def invert_against(capsys, server, *extra):
    return run_arpo(
        capsys, "invert", SAMPLE_IMAGE, "--models", "tiny", "--brain", "vllm", "--base-url", server.base_url,
        "--vlm", "scripted-vlm", "--llm", "scripted-llm", "--steps", "1", "--json", *extra,
    )


def stored_calls(home, run_id):
    with sqlite3.connect(home / "arpo.db") as db:
        db.row_factory = sqlite3.Row
        return [dict(row) for row in db.execute(
            "SELECT * FROM brain_calls WHERE run_id = ? ORDER BY id", (run_id,))]


@pytest.mark.parametrize("framework", ["vanilla", "enhanced"])
@pytest.mark.parametrize("personality", sorted(PERSONALITIES))
def test_both_frameworks_complete_against_each_server(capsys, arpo_home, personality, framework):
    with BrainServer(ScriptedBrain(personality=PERSONALITIES[personality]())) as server:
        outcome = invert_against(capsys, server, "--framework", framework)
    assert outcome.exit_code == 0, outcome.stderr
    result = outcome.json()
    [first] = [it for it in result["iterations"] if it["index"] == 0]
    assert first["candidates"], "the LLM's proposal reached selection"
    # Text-only requests never carry lists of parts; every request is bounded and seeded.
    for request in server.requests:
        for message in request.messages:
            if isinstance(message["content"], list):
                assert any(part["type"] == "image_url" for part in message["content"])
        assert request.body["max_tokens"] <= 500 and request.body["seed"] == 0
    calls = stored_calls(arpo_home, result["run_id"])
    assert len(calls) == len(server.requests) == result["brain_calls"]
    proposals = [call for call in calls if call["role"] == "proposer" and call["ok"]]
    expected_format = "json_object" if personality.startswith("llama-cpp") else "json_schema"
    assert {call["response_format"] for call in proposals} == {expected_format}
    if personality == "babbler":
        assert {call["finish_reason"] for call in calls if call["ok"]} == {"length"}


def test_a_run_that_fails_on_its_brain_keeps_every_failed_request(capsys, arpo_home):
    with BrainServer(ScriptedBrain(personality=LlamaCppPersonality(vision_models=("scripted-vlm",)))) as server:
        outcome = invert_against(capsys, server, "--llm-structured-output", "json-schema")
    assert outcome.exit_code == 3
    last_line = outcome.stderr.strip().splitlines()[-1]
    assert "refused response_format json_schema" in last_line
    assert "Input should be 'text' or 'json_object'" in last_line
    with sqlite3.connect(arpo_home / "arpo.db") as db:
        run_id, status = db.execute("SELECT id, status FROM runs").fetchone()
    assert status == "failed"
    calls = stored_calls(arpo_home, run_id)
    failed = [call for call in calls if not call["ok"]]
    assert [(c["role"], c["status_code"], c["response_format"]) for c in failed] == [
        ("proposer", 500, "json_schema")]
    assert "Input should be 'text' or 'json_object'" in failed[0]["error"]
    # The VLM kept the default (auto) and was never refused: it wants no JSON.
    assert all(call["ok"] for call in calls if call["role"] == "comparer")
    shown = run_arpo(capsys, "history", run_id)
    assert "Input should be 'text' or 'json_object'" in shown.stdout
    assert "Input should be 'text' or 'json_object'" in run_arpo(capsys, "history", run_id, "--json").json()["error"]


def test_structured_output_flags_are_recorded_per_role(capsys, arpo_home):
    with BrainServer(ScriptedBrain()) as server:
        outcome = invert_against(capsys, server, "--structured-output", "json-object", "--vlm-structured-output",
                                 "off", "--llm-max-tokens", "123", "--temperature", "0.7", "--brain-seed", "9")
    assert outcome.exit_code == 0, outcome.stderr
    with sqlite3.connect(arpo_home / "arpo.db") as db:
        config = json.loads(db.execute("SELECT config FROM runs").fetchone()[0])
    assert (config["vlm"]["structured_output"], config["llm"]["structured_output"]) == ("off", "json-object")
    assert (config["llm"]["max_tokens"], config["vlm"]["max_tokens"]) == (123, None)
    assert config["brain_details"]["llm"]["temperature"] == 0.7
    proposal = next(r for r in server.requests if r.kind == "phrases")
    assert proposal.response_format == {"type": "json_object"}
    assert (proposal.body["max_tokens"], proposal.body["temperature"], proposal.body["seed"]) == (123, 0.7, 9)


def test_a_bad_structured_output_value_is_one_line(capsys, arpo_home):
    outcome = run_arpo(capsys, "invert", SAMPLE_IMAGE, "--models", "tiny", "--brain", "offline",
                       "--structured-output", "yaml")
    assert outcome.exit_code == 2
    [line] = outcome.stderr.strip().splitlines()[-1:]
    assert line.startswith("arpo: error: invalid value for --structured-output: Input should be 'auto'")


def test_ctrl_c_during_a_brain_call_exits_130_quickly_and_the_run_resumes(capsys, arpo_home):
    brain = ScriptedBrain(latency_s=60.0)
    with BrainServer(brain) as server:
        command = [sys.executable, "-m", "arpo.app.cli", "invert", str(SAMPLE_IMAGE), "--models", "tiny",
                   "--brain", "vllm", "--base-url", server.base_url, "--steps", "1"]
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   env={**os.environ, "ARPO_HOME": str(arpo_home)})
        try:
            deadline = time.monotonic() + 120
            while not server.requests and time.monotonic() < deadline and process.poll() is None:
                time.sleep(0.1)
            assert server.requests, "the run never reached its first brain call"
            time.sleep(0.3)
            process.send_signal(signal.SIGINT)
            interrupted_at = time.monotonic()
            _, stderr = process.communicate(timeout=10)
            waited = time.monotonic() - interrupted_at
        finally:
            if process.poll() is None:
                process.kill()
        assert process.returncode == 130, stderr
        assert waited < 2, f"took {waited:.1f} s to stop"
        assert "arpo: interrupted; what was done is kept" in stderr and "Traceback" not in stderr
        with sqlite3.connect(arpo_home / "arpo.db") as db:
            run_id, status = db.execute("SELECT id, status FROM runs").fetchone()
        assert status == "interrupted"
        assert any(call["error"] == "interrupted (Ctrl-C)" for call in stored_calls(arpo_home, run_id))

        brain.latency_s = 0.0
        resumed = run_arpo(capsys, "resume", run_id, "--json")
    assert resumed.exit_code == 0, resumed.stderr
    assert resumed.json()["status"] == "finished"


@pytest.mark.parametrize("framework", ["vanilla", "enhanced"])
def test_a_text_only_model_in_the_vlm_role_stops_the_run_in_one_line(capsys, arpo_home, framework):
    """llama-cpp-python drops every image message sent to a text-only model; the model answers an
    empty prompt. arpo notices from the prompt token count instead of passing the babble on."""
    with BrainServer(ScriptedBrain(personality=LlamaCppPersonality())) as server:
        base_url = server.base_url
        outcome = run_arpo(capsys, "invert", SAMPLE_IMAGE, "--models", "tiny", "--brain", "vllm",
                           "--base-url", base_url, "--steps", "1", "--framework", framework)
    assert outcome.exit_code == 3, outcome.stderr
    last_line = outcome.stderr.strip().splitlines()[-1]
    role = "comparer" if framework == "vanilla" else "describer"
    assert f" at {base_url} never saw the request: the server counted 7 prompt tokens" in last_line
    assert last_line.startswith(f"arpo: error: {role} brain ")
    assert "serve a vision model there, or use --vlm-brain offline (with --framework vanilla)" in last_line
    assert "Traceback" not in outcome.stderr
    assert not any(request.kind == "phrases" for request in server.requests), "no babble reached the LLM"
    with sqlite3.connect(arpo_home / "arpo.db") as db:
        run_id, status = db.execute("SELECT id, status FROM runs").fetchone()
    assert status == "failed"
    failed = [call for call in stored_calls(arpo_home, run_id) if not call["ok"]]
    assert failed and {(c["role"], c["status_code"], c["prompt_tokens"]) for c in failed} == {(role, 200, 7)}
    assert all(call["iteration_index"] == 0 and call["completion_tokens"] > 0 for call in failed)


def test_a_failed_run_files_its_calls_under_their_iteration_and_shows_the_best_prompt_so_far(capsys, arpo_home):
    """Iteration 0 is scored, then the comparison fails on the empty replies of a mismatched chat
    format: the failed calls belong to iteration 0 and the history shows iteration 0's prompt."""
    brain = ScriptedBrain()
    brain.enqueue(ScriptedReply.empty(), ScriptedReply.empty())
    with BrainServer(brain) as server:
        outcome = invert_against(capsys, server, "--vlm-max-tokens", "50")
    assert outcome.exit_code == 3
    last_line = outcome.stderr.strip().splitlines()[-1]
    assert "comparer brain scripted-vlm: empty reply to a " in last_line and "(asked 2 times)" in last_line
    assert "--chat_format" in last_line
    assert len(server.requests) == 2, "asked once more, not five times"
    with sqlite3.connect(arpo_home / "arpo.db") as db:
        [run_id] = db.execute("SELECT id FROM runs").fetchone()
    calls = stored_calls(arpo_home, run_id)
    assert [(c["role"], c["ok"], c["iteration_index"], c["completion_tokens"]) for c in calls] == [
        ("comparer", 0, 0, 0)] * 2
    assert all(call["prompt_tokens"] > 170 for call in calls), "text and both images counted"

    shown = run_arpo(capsys, "history", run_id)
    scored = run_arpo(capsys, "history", run_id, "--json").json()
    [first] = scored["iterations"]
    assert "best prompt: None" not in shown.stdout
    assert f"best prompt so far (iteration 0, CLIP-I {first['clip_i']:.4f}): {first['prompt']}" in shown.stdout
    assert (scored["prompt"], scored["best_clip_i"]) == (first["prompt"], first["clip_i"])
