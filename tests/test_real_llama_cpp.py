"""`arpo invert` against a real small GGUF model behind llama-cpp-python's OpenAI-compatible server.

Opt-in (marked slow; minutes on a CPU): it needs `llama-cpp-python[server]` installed in some python
and a GGUF model file, neither of which the project installs.

    ARPO_RUN_SLOW=1 ARPO_LLAMA_MODEL=/path/model.gguf ARPO_LLAMA_PYTHON=/path/venv/bin/python \
        .venv/bin/pytest -q tests/test_real_llama_cpp.py

ARPO_LLAMA_PYTHON defaults to the python running the tests; ARPO_LLAMA_CHAT_FORMAT, when set, is passed
as `--chat_format` (a GGUF without a chat template, such as the Gemma 3 270M base model on PyPI, gets
llama-cpp-python's llama-2 fallback, to which that model answers nothing: use `gemma` there). The test
starts the server itself on a free loopback port, as a person would, and stops it afterwards.

A person with one small text model first tries it in both roles. The server's chat formats drop any
message sent as content parts, images and instructions with it, so the VLM roles would describe or
compare from nothing: arpo must notice (the server counts a handful of prompt tokens for a long
request) and stop in one line that names the fix, with the request on record. With the VLM role
offline, the vanilla loop must finish against the same server: negotiate structured output (it
refuses json_schema with a 500), record every request and keep only well-formed phrases.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from cli_harness import SAMPLE_IMAGE, run_arpo

from arpo.agents.proposal import PHRASE_WORDS

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

MODEL_ALIAS = "local-gguf"

ROLES_BY_FRAMEWORK = {
    "vanilla": {"comparer", "proposer"},
    "enhanced": {"describer", "differ", "proposer"},
}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _log_tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory):
    """Base URL of a llama-cpp-python server serving ARPO_LLAMA_MODEL, for the tests of this module."""
    model = os.environ.get("ARPO_LLAMA_MODEL")
    if not model:
        pytest.skip("set ARPO_LLAMA_MODEL to a GGUF file")
    if not Path(model).is_file():
        pytest.fail(f"ARPO_LLAMA_MODEL={model} is not a file")
    python = os.environ.get("ARPO_LLAMA_PYTHON") or sys.executable
    importable = subprocess.run([python, "-c", "import llama_cpp.server"], capture_output=True, text=True)
    if importable.returncode != 0:
        pytest.skip(f"{python} cannot import llama_cpp.server (pip install 'llama-cpp-python[server]')")

    chat_format = os.environ.get("ARPO_LLAMA_CHAT_FORMAT")
    port = _free_port()
    log_path = tmp_path_factory.mktemp("llama-server") / "server.log"
    with log_path.open("wb") as log:
        server = subprocess.Popen(
            [
                python, "-m", "llama_cpp.server", "--model", model, "--model_alias", MODEL_ALIAS,
                "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048",
                *(["--chat_format", chat_format] if chat_format else []),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        _wait_until_ready(base_url, server, log_path)
        yield base_url
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def _wait_until_ready(base_url: str, server: subprocess.Popen, log_path: Path, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"llama_cpp.server exited with {server.returncode}:\n{_log_tail(log_path)}")
        try:
            with urllib.request.urlopen(f"{base_url}/models", timeout=2) as reply:
                if reply.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"llama_cpp.server not ready within {timeout_s:g} s:\n{_log_tail(log_path)}")


def _brain_calls(home: Path, run_id: str) -> list[tuple]:
    with sqlite3.connect(home / "arpo.db") as db:
        return db.execute(
            "SELECT role, model, ok, status_code, response_format, error FROM brain_calls WHERE run_id = ? "
            "ORDER BY id",
            (run_id,),
        ).fetchall()


def _assert_well_formed(phrase: str, prompt: str) -> None:
    words = phrase.split()
    assert PHRASE_WORDS[0] <= len(words) <= PHRASE_WORDS[1], f"{phrase!r} is not a 2-6 word phrase"
    assert "," not in phrase and "\n" not in phrase, f"{phrase!r} is not one phrase"
    assert len({word.casefold() for word in words}) == len(words), f"{phrase!r} repeats a word"
    assert phrase.casefold() not in prompt.casefold(), f"{phrase!r} is already in the prompt {prompt!r}"


@pytest.mark.parametrize("framework", ["vanilla", "enhanced"])
def test_a_text_only_model_in_the_vlm_role_is_refused_in_one_line(capsys, arpo_home, llama_server, framework):
    outcome = run_arpo(
        capsys, "invert", SAMPLE_IMAGE, "--models", "tiny", "--steps", "2", "--framework", framework,
        "--brain", "vllm", "--base-url", llama_server, "--vlm", MODEL_ALIAS, "--llm", MODEL_ALIAS,
    )
    assert outcome.exit_code == 3, outcome.stderr
    errors = [line for line in outcome.stderr.splitlines() if line.startswith("arpo: error:")]
    assert len(errors) == 1 and "Traceback" not in outcome.stderr, outcome.stderr
    message = errors[0]
    assert "never saw the request" in message, message
    assert "--vlm-brain offline" in message
    with sqlite3.connect(arpo_home / "arpo.db") as db:
        run_id, status = db.execute("SELECT id, status FROM runs").fetchone()
    assert status == "failed"
    calls = _brain_calls(arpo_home, run_id)
    assert calls and calls[-1][2] == 0 and "never saw the request" in calls[-1][5]
    assert {call[0] for call in calls} <= ROLES_BY_FRAMEWORK[framework] - {"proposer"}


def test_vanilla_loop_completes_with_a_small_text_model_as_its_llm(capsys, arpo_home, llama_server):
    outcome = run_arpo(
        capsys, "invert", SAMPLE_IMAGE, "--models", "tiny", "--steps", "2", "--framework", "vanilla",
        "--vlm-brain", "offline", "--llm-brain", "vllm", "--llm-base-url", llama_server, "--llm", MODEL_ALIAS,
        "--json",
    )
    assert outcome.exit_code == 0, outcome.stderr
    result = outcome.json()
    assert result["status"] == "finished", result

    calls = _brain_calls(arpo_home, result["run_id"])
    assert calls, "no brain call was recorded"
    assert result["brain_calls"] == len(calls)
    assert {call[0] for call in calls} == {"proposer"}
    assert all(call[1] == MODEL_ALIAS for call in calls)
    assert all(call[3] in (200, 500) for call in calls), "every request's HTTP status is recorded"
    # llama-cpp-python refuses json_schema with a 500; arpo falls back and remembers it for the run.
    schema_requests = [call for call in calls if call[4] == "json_schema"]
    assert len(schema_requests) == 1, schema_requests
    assert schema_requests[0][3] == 500 and "Input should be 'text' or 'json_object'" in schema_requests[0][5]
    proposals = [call for call in calls if call[3] == 200]
    assert proposals and all(call[4] == "json_object" for call in proposals)

    rounds = [it for it in result["iterations"] if it["candidates"]]
    assert rounds, f"no round had candidates: {result['stopped_because']}"
    for iteration in rounds:
        phrases = [candidate["phrase"] for candidate in iteration["candidates"]]
        assert len({p.casefold() for p in phrases}) == len(phrases), f"duplicate candidates: {phrases}"
        assert all(p.strip() and "," not in p and "\n" not in p for p in phrases), phrases
        if iteration["candidate_source"] == "llm":  # the phrase banks have their own one-word entries
            for phrase in phrases:
                _assert_well_formed(phrase, iteration["prompt"])
