"""A weak model's replies through the whole CLI: dropped phrases and an offline fallback are stored and
shown by `arpo history`, in text and JSON."""

import json
from pathlib import Path

from cli_harness import SAMPLE_IMAGE, run_arpo

from scripted_server import BrainServer, ScriptedBrain, ScriptedReply

REPLIES = {
    entry["id"]: entry
    for entry in json.loads((Path(__file__).parent / "fixtures" / "weak_model_replies.json").read_text())["replies"]
}


def invert(capsys, server, *extra):
    return run_arpo(
        capsys, "invert", SAMPLE_IMAGE, "--models", "tiny", "--brain", "vllm", "--base-url", server.base_url,
        "--framework", "vanilla", "--steps", "1", "--init-prompt", "a cat sitting on a windowsill", "--json", *extra,
    )


def test_dropped_phrases_are_stored_and_shown_with_their_reasons(capsys, arpo_home):
    qwen = REPLIES["qwen2.5-1.5b-mixed"]
    with BrainServer(ScriptedBrain()) as server:
        server.enqueue(ScriptedReply(), ScriptedReply.text(qwen["reply"]))  # comparison, then the proposal
        outcome = invert(capsys, server)
    assert outcome.exit_code == 0, outcome.stderr
    result = outcome.json()
    first = result["iterations"][0]
    assert first["candidate_source"] == "llm"
    # Selection lists candidates in the order it decided them, so compare as sets.
    assert sorted(c["phrase"] for c in first["candidates"]) == sorted(qwen["kept"])
    assert [[d["phrase"], d["reason"]] for d in first["dropped"]] == qwen["dropped"]

    history = run_arpo(capsys, "history", result["run_id"])
    assert '     - dropped 2 (too short): "space", "texture"' in history.stdout.splitlines()
    assert '     - dropped 1 (near-duplicate): "color palette variations"' in history.stdout.splitlines()
    as_json = run_arpo(capsys, "history", result["run_id"], "--json").json()
    assert as_json["iterations"][0]["dropped"] == first["dropped"]


def test_a_babbling_model_costs_one_repair_then_the_phrase_banks_take_the_round(capsys, arpo_home):
    gemma = REPLIES["gemma3-270m-placeholder"]
    with BrainServer(ScriptedBrain()) as server:
        server.enqueue(ScriptedReply(), ScriptedReply.text(gemma["reply"]), ScriptedReply.text(gemma["reply"]))
        outcome = invert(capsys, server)
        proposals = server.brain.requests_of_kind("phrases")
    assert outcome.exit_code == 0, outcome.stderr
    assert len(proposals) == 2
    assert "candidate phrase(s) proposed by the phrase banks" in outcome.stderr
    assert "; 2 dropped (see arpo history)" in outcome.stderr
    first = outcome.json()["iterations"][0]
    assert first["candidate_source"] == "offline-fallback"
    assert first["candidates"] and "offline phrase banks" in first["note"]
    assert [d["reason"] for d in first["dropped"]] == ["placeholder", "placeholder"]
    history = run_arpo(capsys, "history", outcome.json()["run_id"]).stdout
    assert "candidates from the offline phrase banks (the LLM's replies were unusable)" in history
