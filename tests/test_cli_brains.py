"""`arpo invert` against a scripted OpenAI-compatible server over real HTTP: both frameworks,
unreliable replies, what reaches the server, what is recorded, and what is never recorded."""

import sqlite3

import pytest
from cli_harness import SAMPLE_IMAGE, run_arpo

from scripted_server import BrainServer, ScriptedBrain, ScriptedReply

SECRET = "sk-test-SECRET-do-not-store-7f3a9c"


@pytest.fixture
def server():
    with BrainServer(ScriptedBrain()) as running:
        yield running


def invert_with(capsys, server, *extra):
    return run_arpo(
        capsys, "invert", SAMPLE_IMAGE, "--models", "tiny", "--brain", "vllm",
        "--base-url", server.base_url, "--vlm", "scripted-vlm", "--llm", "scripted-llm", "--json", *extra,
    )


def brain_call_rows(home, run_id):
    with sqlite3.connect(home / "arpo.db") as db:
        return db.execute(
            "SELECT role, model, ok, prompt_tokens, completion_tokens, latency_s, iteration_index "
            "FROM brain_calls WHERE run_id = ?", (run_id,)
        ).fetchall()


def test_vanilla_framework_survives_429_500_and_malformed_replies(capsys, arpo_home, server):
    server.enqueue(
        ScriptedReply.status(429),                      # comparison, first try: rate limited
        ScriptedReply.status(500),                      # comparison, second try: server error
        ScriptedReply(),                                # comparison, third try: answered by default
        ScriptedReply.malformed("numbered", ["golden hour light", "impressionist brushwork"]),
    )
    outcome = invert_with(capsys, server, "--framework", "vanilla", "--steps", "2")
    assert outcome.exit_code == 0, outcome.stderr
    result = outcome.json()
    first = result["iterations"][0]
    assert {c["phrase"] for c in first["candidates"]} == {"golden hour light", "impressionist brushwork"}

    comparisons = [r for r in server.requests if r.kind == "comparison"]
    assert comparisons, "the vanilla framework compares both images in one VLM call"
    for request in comparisons:
        assert len(request.image_urls) == 2
        assert all(url.startswith("data:image/png;base64,") for url in request.image_urls)
        assert request.body["model"] == "scripted-vlm"
    assert not [r for r in server.requests if r.kind == "description"]
    assert all(r.body["model"] == "scripted-llm" for r in server.requests if r.kind == "phrases")

    rows = brain_call_rows(arpo_home, result["run_id"])
    rounds = sum(1 for it in result["iterations"] if it["candidates"])
    assert all(row[3] and row[4] and row[5] > 0 for row in rows if row[2]), "tokens and latency recorded"
    with sqlite3.connect(arpo_home / "arpo.db") as db:
        comparer = db.execute(
            "SELECT call_id, attempts, status_code, ok, error FROM brain_calls "
            "WHERE run_id = ? AND role = 'comparer' ORDER BY id", (result["run_id"],)
        ).fetchall()
    assert len({row[0] for row in comparer}) == rounds
    # Every request is a row, failed ones included, with its status and the server's reason.
    assert [row[1:4] for row in comparer[:3]] == [(1, 429, 0), (2, 500, 0), (3, 200, 1)]
    assert "429 rate limited" in comparer[0][4] and "500 server error" in comparer[1][4]
    assert result["brain_calls"] == len(rows) == len(server.requests)


def test_enhanced_framework_describes_once_per_image_and_compares_in_text(capsys, arpo_home, server):
    outcome = invert_with(capsys, server, "--framework", "enhanced", "--steps", "1")
    assert outcome.exit_code == 0, outcome.stderr
    result = outcome.json()
    rounds = sum(1 for it in result["iterations"] if it["candidates"])
    descriptions = [r for r in server.requests if r.kind == "description"]
    # Reference content + style once per run, then content + style of each compared image.
    assert len(descriptions) == 2 + 2 * rounds
    assert all(len(r.image_urls) == 1 for r in descriptions)
    assert not [r for r in server.requests if r.kind == "comparison"]
    differences = [r for r in server.requests if r.kind == "differences"]
    assert len(differences) == 2 * rounds  # content and style compared separately
    assert all(r.body["model"] == "scripted-llm" for r in differences)
    rows = brain_call_rows(arpo_home, result["run_id"])
    assert sorted({row[0] for row in rows}) == ["describer", "differ", "proposer"]


def test_brain_calls_of_one_step_run_concurrently(capsys, arpo_home):
    with BrainServer(ScriptedBrain(latency_s=0.4)) as slow:
        outcome = invert_with(capsys, slow, "--framework", "enhanced", "--steps", "1")
    assert outcome.exit_code == 0, outcome.stderr
    describes = sorted((r for r in slow.requests if r.kind == "description"), key=lambda r: r.received_at)
    # The reference's content and style requests arrive together, not one latency apart.
    assert abs(describes[1].received_at - describes[0].received_at) < 0.3


def test_an_empty_proposal_stops_the_loop(capsys, arpo_home):
    with BrainServer(ScriptedBrain(phrase_pool=[])) as stingy:
        outcome = invert_with(capsys, stingy, "--steps", "5")
    assert outcome.exit_code == 0, outcome.stderr
    result = outcome.json()
    assert len(result["iterations"]) == 1
    assert result["stopped_because"] == "no new candidate phrases were proposed"


def test_auth_failure_exits_3_in_one_line_and_keeps_what_was_stored(capsys, arpo_home, server):
    server.enqueue(ScriptedReply.status(401))
    outcome = invert_with(capsys, server, "--steps", "2")
    assert outcome.exit_code == 3
    assert len(outcome.stderr.strip().splitlines()[-1:]) == 1
    assert "authentication" in outcome.stderr.splitlines()[-1]
    with sqlite3.connect(arpo_home / "arpo.db") as db:
        status, error = db.execute("SELECT status, error FROM runs").fetchone()
        iterations = db.execute("SELECT count(*) FROM iterations").fetchone()[0]
    assert status == "failed" and "authentication" in error
    assert iterations == 1  # the first generated image and its scores were kept


def test_api_key_reaches_the_server_but_nothing_we_write(capsys, arpo_home, server, monkeypatch, tmp_path):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    out = tmp_path / "out"
    outcome = run_arpo(
        capsys, "invert", SAMPLE_IMAGE, "--models", "tiny", "--brain", "openai", "--base-url", server.base_url,
        "--steps", "1", "--out", out, "--json",
    )
    assert outcome.exit_code == 0, outcome.stderr
    assert all(r.authorization == f"Bearer {SECRET}" for r in server.requests)
    assert SECRET not in outcome.stdout + outcome.stderr
    written = [p for root in (arpo_home, out) for p in root.rglob("*") if p.is_file()]
    assert any(p.name.endswith(".checkpoints.sqlite") for p in written)
    for path in written:
        assert SECRET.encode() not in path.read_bytes(), f"key found in {path}"


def test_missing_openai_key_fails_before_anything_is_stored(capsys, arpo_home):
    outcome = run_arpo(capsys, "invert", SAMPLE_IMAGE, "--models", "tiny", "--brain", "openai")
    assert outcome.exit_code == 3
    assert outcome.stderr.strip().splitlines() == [
        "arpo: error: OPENAI_API_KEY is not set; export it, or pick another brain (--brain vllm or --brain offline)"
    ]
    assert not (arpo_home / "arpo.db").exists() or sqlite3.connect(arpo_home / "arpo.db").execute(
        "SELECT count(*) FROM runs"
    ).fetchone()[0] == 0
