"""Refinement inside the loop (PH2P, EDITOR, the regressor starting from the best prompt), run budgets,
and compression of a full prompt: through the graph with scores known in advance, and end to end
through the CLI, a session and a batch with tiny models."""

from __future__ import annotations

import io

import pytest
from cli_harness import SAMPLE_IMAGE, run_arpo
from regressor_shapes import write_shapes
from test_batch_runs import make_images
from test_graph_loop import WordCountingClip

from arpo.core.run_config import BrainChoice, RunConfig
from arpo.graphs.invocation import build_context, execute_run, start_run
from arpo.graphs.refinement import candidate_phrases
from arpo.storage.history import History
from arpo.tools.model_stack import build_model_stack
from arpo.tools.reference_image import load_reference_image
from scripted_server import BrainServer, ScriptedBrain


def test_candidates_are_what_the_tool_adds_or_changes():
    current = "a cat on a sofa, soft light"
    found = candidate_phrases(["a cat on a sofa, golden hour glow", "soft light, oil painting, a black cat sleeping"], current)
    assert found == ["golden hour glow", "oil painting", "black", "sleeping"]
    long_run = candidate_phrases(["one two three four five six seven eight"], current)
    assert long_run == ["one two three four five six", "seven eight"]


@pytest.fixture(scope="module")
def regressor_checkpoint(tmp_path_factory):
    """A tiny trained regressor whose prompt bank holds what the word-counting scorer likes."""
    import contextlib

    root = tmp_path_factory.mktemp("refine-regressor")
    manifest = write_shapes(root / "shapes", per_combination=2)
    from arpo.app.cli import main  # train through the CLI, as a person would
    import sys

    argv, sys.argv = sys.argv, ["arpo", "regressor", "train", str(manifest), "--out", str(root / "ckpt"),
                                "--backbone", "tiny", "--target-space", "tiny", "--epochs", "2", "--batch-size", "6"]
    with contextlib.suppress(SystemExit), contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        main()
    sys.argv = argv
    bank = root / "bank.txt"
    bank.write_text("a cat, good light, good colour\nbad mood, bad crop\n")
    return root / "ckpt", bank


class EachImageBetter(WordCountingClip):
    """Text scores by counting words; each regenerated image scores higher than the one before, so
    the best prompt is always the latest (and refinement starts from it)."""

    def __init__(self, clip):
        super().__init__(clip)
        self._images_scored = 0

    def image_similarity(self, reference, generated):
        self._images_scored += 1
        return self._images_scored / 100


def test_a_round_that_keeps_nothing_is_refined_and_what_refining_keeps_goes_on(regressor_checkpoint):
    checkpoint, bank = regressor_checkpoint
    stack = build_model_stack("tiny")
    stack.clip = EachImageBetter(stack.clip)
    history = History.open()
    with BrainServer(ScriptedBrain(phrase_pool=[], phrases_per_reply=4)) as server:  # proposes nothing
        brain = BrainChoice(provider="vllm", base_url=server.base_url)
        config = RunConfig(models="tiny", vlm=brain, llm=brain, steps=5, initial_prompt="a cat",
                           refine="auto", regressor=str(checkpoint), prompt_bank=str(bank))
        context = build_context(config, history, models=stack)
        handle = start_run(history, config, load_reference_image(SAMPLE_IMAGE), context)
        nodes = []
        execute_run(handle, on_update=lambda node, update: nodes.append(node))
    run = history.get_run(handle.run_id)
    first, second = run.iterations_detail
    assert first.refinement["tool"] == "regressor" and first.refinement["kept"] == ["good light", "good colour"]
    assert "bad mood" in first.refinement["proposed"] and first.candidates == []  # the proposal round had nothing
    assert second.prompt == "a cat, good light, good colour"
    # The second round keeps nothing and its refinement finds nothing new: only then does the loop stop.
    assert second.refinement["kept"] == []
    assert run.stopped_because == "no new candidate phrases were proposed; refining with regressor kept nothing either"
    assert nodes.count("refine") == 2 and nodes[-1] == "finish"
    calls = history.tool_calls(run.id)
    assert [(call.tool, call.caller, call.iteration_index) for call in calls] == [("regressor", "loop", 0), ("regressor", "loop", 1)]
    assert calls[0].arguments["start_prompt"] == "a cat" and calls[0].seconds > 0


def _invert(capsys, server, *flags):
    return run_arpo(capsys, "invert", SAMPLE_IMAGE, "--models", "tiny", "--brain", "vllm", "--base-url", server.base_url,
                    "--init-prompt", "a cat on a sofa", "--json", *flags)


@pytest.mark.parametrize("tool", ["ph2p", "editor"])
def test_refine_with_an_optimising_tool_through_the_cli(capsys, tool):
    with BrainServer(ScriptedBrain(phrase_pool=[])) as server:
        outcome = _invert(capsys, server, "--steps", "1", "--refine", tool, "--refine-steps", "2")
    assert outcome.exit_code == 0, outcome.stderr
    result = outcome.json()
    refined = result["iterations"][0]["refinement"]
    assert refined["tool"] == tool and refined["caller"] == "loop", refined
    assert set(refined["kept"]) <= set(refined["proposed"])
    if tool == "ph2p":  # its tokens drift from the prompt's; EDITOR may recover the prompt it started from
        assert refined["proposed"]
    history = History.open()
    trajectory = history.inversion_steps(result["run_id"], f"refine:{tool}:0")
    assert len([step for step in trajectory if step.details is None or step.details.get("phase") != "embedding-to-text"]) == 2
    assert "refin" in outcome.stderr  # progress says what happened


def test_refine_none_stops_when_a_round_keeps_nothing(capsys):
    with BrainServer(ScriptedBrain(phrase_pool=[])) as server:
        outcome = _invert(capsys, server, "--steps", "3", "--refine", "none")
    result = outcome.json()
    assert result["stopped_because"] == "no new candidate phrases were proposed"
    assert result["iterations"][0]["refinement"] is None


def test_a_person_asks_for_a_refinement_in_a_session(capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("refine editor\nstop\n"))
    with BrainServer(ScriptedBrain(phrase_pool=[])) as server:
        outcome = run_arpo(capsys, "session", SAMPLE_IMAGE, "--models", "tiny", "--brain", "vllm", "--base-url",
                           server.base_url, "--init-prompt", "a cat", "--refine-steps", "1")
    assert outcome.exit_code == 0, outcome.stderr
    [run] = History.open().list_runs()
    [call] = History.open().tool_calls(run.id)
    assert (call.tool, call.caller) == ("editor", "person")


def test_a_batch_refines_its_items(capsys, tmp_path):
    make_images(tmp_path / "images", 2)
    with BrainServer(ScriptedBrain(phrase_pool=[])) as server:
        outcome = run_arpo(capsys, "batch", tmp_path / "images", "--models", "tiny", "--brain", "vllm", "--base-url",
                           server.base_url, "--steps", "1", "--refine", "editor", "--refine-steps", "1", "--json")
    assert outcome.exit_code == 0, outcome.stderr
    history = History.open()
    for item in outcome.json()["items"]:
        assert [call.tool for call in history.tool_calls(item["run_id"])] == ["editor"]


def test_budgets_stop_a_run_cleanly_and_say_which(capsys):
    with BrainServer(ScriptedBrain()) as server:
        timed = _invert(capsys, server, "--steps", "5", "--max-seconds", "0.001")
        tokens = _invert(capsys, server, "--steps", "5", "--max-brain-tokens", "1")
    assert timed.exit_code == 0 and timed.json()["stopped_because"] == "reached the time budget (0.001 s)"
    assert len(timed.json()["iterations"]) == 1
    assert tokens.exit_code == 0 and tokens.json()["stopped_because"].startswith("reached the brain-token budget (1 tokens;")


LONG_FIRST_PROMPT = ", ".join(
    ["a tabby cat asleep on a velvet sofa", "warm afternoon light", "oil painting", "thick brush strokes",
     "muted earth tones", "shallow depth of field", "ornate golden frame", "a window with lace curtains",
     "dust in the air", "a vase of dried flowers", "Dutch golden age", "soft shadows", "rich textures"]
)


def test_a_full_prompt_is_compressed_and_no_stored_prompt_passes_the_budget(capsys):
    outcome = run_arpo(capsys, "invert", SAMPLE_IMAGE, "--models", "tiny", "--brain", "offline", "--steps", "20",
                       "--init-prompt", LONG_FIRST_PROMPT, "--json")
    assert outcome.exit_code == 0, outcome.stderr
    result = outcome.json()
    history = History.open()
    detail = history.get_run(result["run_id"])
    budget = detail.iterations_detail[0].token_budget
    assert all(record.token_count <= budget for record in detail.iterations_detail), "no prompt past the budget"
    compressions = [call for call in history.tool_calls(detail.id) if call.tool == "compress"]
    assert compressions, "the prompt filled its window and was compressed"
    for call in compressions:
        squeeze = call.outcome
        assert squeeze["after_tokens"] <= squeeze["before_tokens"]
        if squeeze["accepted"]:
            assert squeeze["after_score"] >= squeeze["before_score"] and squeeze["after_tokens"] < squeeze["before_tokens"]
    shown = [it["compression"] for it in result["iterations"] if it["compression"]]
    assert shown and {"before", "after", "before_score", "after_score"} <= set(shown[0])
    stored = History.open().get_run(detail.id)
    t2i = build_model_stack("tiny").text_to_image
    assert t2i.count_tokens(stored.best_prompt) <= budget and t2i.count_tokens(stored.last_prompt) <= budget


def test_the_llm_compresses_a_full_prompt_and_the_refused_phrase_fits_in_the_room_made():
    from scripted_server import ScriptedReply

    full = ", ".join(["good light", "some filler words", "good colour", "more filler words"] * 5 + ["warm tone"])
    shorter = ", ".join(["good light", "good colour"] * 5)
    stack = build_model_stack("tiny")
    stack.clip = WordCountingClip(stack.clip)
    budget = stack.text_to_image.token_budget()
    assert stack.text_to_image.count_tokens(full) >= budget - 5, "the prompt fills its window"
    history = History.open()
    with BrainServer(ScriptedBrain()) as server:
        server.enqueue(ScriptedReply(), ScriptedReply.text('{"phrases": ["good mood tonight", "bad crop"]}'),
                       ScriptedReply.text(shorter))
        brain = BrainChoice(provider="vllm", base_url=server.base_url)
        config = RunConfig(models="tiny", vlm=brain, llm=brain, steps=1, initial_prompt=full, refine="none")
        context = build_context(config, history, models=stack)
        handle = start_run(history, config, load_reference_image(SAMPLE_IMAGE), context)
        execute_run(handle)
        compressor_requests = [request for request in server.requests if "too long" in request.text]
    [call] = [call for call in history.tool_calls(handle.run_id) if call.tool == "compress"]
    assert call.outcome["method"] == "llm" and call.outcome["accepted"] and call.outcome["after"] == shorter
    assert call.outcome["after_score"] >= call.outcome["before_score"]
    assert call.kept == ["good mood tonight"] and compressor_requests
    first, second = history.get_run(handle.run_id).iterations_detail
    assert first.compression["after"] == shorter
    assert second.prompt == f"{shorter}, good mood tonight"
    assert all(record.token_count <= budget for record in (first, second))


def test_a_first_prompt_past_the_budget_is_cut_to_the_phrases_the_model_reads(capsys):
    too_long = ", ".join([LONG_FIRST_PROMPT] * 3)
    outcome = run_arpo(capsys, "invert", SAMPLE_IMAGE, "--models", "tiny", "--brain", "offline", "--steps", "0",
                       "--init-prompt", too_long, "--json")
    assert outcome.exit_code == 0, outcome.stderr
    [first] = outcome.json()["iterations"]
    history = History.open()
    budget = history.get_run(outcome.json()["run_id"]).iterations_detail[0].token_budget
    assert first["token_count"] <= budget and too_long.startswith(first["prompt"])
    [fit] = history.tool_calls(outcome.json()["run_id"])
    assert (fit.tool, fit.outcome["method"], fit.outcome["before"]) == ("compress", "fit", too_long)


def test_refine_with_the_regressor_through_the_cli(capsys, regressor_checkpoint):
    checkpoint, bank = regressor_checkpoint
    with BrainServer(ScriptedBrain(phrase_pool=[])) as server:
        outcome = _invert(capsys, server, "--steps", "1", "--refine", "regressor", "--regressor", str(checkpoint),
                          "--prompt-bank", str(bank))
    assert outcome.exit_code == 0, outcome.stderr
    refined = outcome.json()["iterations"][0]["refinement"]
    assert refined["tool"] == "regressor" and {"good light", "good colour", "bad mood", "bad crop"} <= set(refined["proposed"])
