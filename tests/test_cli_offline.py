"""`arpo invert` end to end with tiny models and no brain: the JSON result, the history rows, the CLI surface."""

import sqlite3

import pytest
from cli_harness import SAMPLE_IMAGE, run_arpo

TINY_OFFLINE = ("--models", "tiny", "--brain", "offline")


def test_offline_invert_prints_the_promised_json(capsys, arpo_home, tmp_path):
    out = tmp_path / "result"
    outcome = run_arpo(capsys, "invert", SAMPLE_IMAGE, *TINY_OFFLINE, "--steps", "3", "--json", "--out", out)
    assert outcome.exit_code == 0, outcome.stderr
    result = outcome.json()

    assert {"run_id", "prompt", "last_prompt", "iterations", "stopped_because"} <= result.keys()
    iterations = result["iterations"]
    assert 1 <= len(iterations) <= 4
    assert [it["index"] for it in iterations] == list(range(len(iterations)))
    for iteration in iterations:
        assert {"prompt", "candidates", "selected", "clip_t", "clip_i", "image"} <= iteration.keys()
        assert (out / f"iteration-{iteration['index']:03d}.png").is_file()
        assert iteration["image"].startswith(str(out))
    # The best prompt is the one whose regenerated image scored the highest CLIP-I, not the last one.
    best = max(iterations, key=lambda it: it["clip_i"])
    assert result["prompt"] == best["prompt"]
    assert result["last_prompt"] == iterations[-1]["prompt"]
    # Each prompt is the previous one plus exactly the phrases selected from its candidates.
    for before, after in zip(iterations, iterations[1:]):
        assert before["selected"], "a new iteration only follows a non-empty selection"
        assert after["prompt"] == ", ".join([before["prompt"]] + before["selected"])
        assert set(before["selected"]) <= {c["phrase"] for c in before["candidates"]}
    if len(iterations) == 4:
        assert result["stopped_because"] == "reached the step limit (3)"
    else:
        assert iterations[-1]["selected"] == []
    assert (out / "result.json").is_file()
    assert "meaningless" in outcome.stderr  # tiny models say so plainly


def test_history_rows_match_the_iterations(capsys, arpo_home):
    outcome = run_arpo(capsys, "invert", SAMPLE_IMAGE, *TINY_OFFLINE, "--steps", "2", "--json")
    assert outcome.exit_code == 0, outcome.stderr
    result = outcome.json()
    with sqlite3.connect(arpo_home / "arpo.db") as db:
        rows = db.execute(
            "SELECT i.[index], i.prompt, count(c.id), sum(c.selected) FROM iterations i "
            "LEFT JOIN candidates c ON c.iteration_id = i.id WHERE i.run_id = ? GROUP BY i.id ORDER BY i.[index]",
            (result["run_id"],),
        ).fetchall()
        status, best = db.execute("SELECT status, best_prompt FROM runs WHERE id = ?", (result["run_id"],)).fetchone()
        mode = db.execute("PRAGMA journal_mode").fetchone()[0]
    assert [(r[0], r[1]) for r in rows] == [(it["index"], it["prompt"]) for it in result["iterations"]]
    assert [r[2] for r in rows] == [len(it["candidates"]) for it in result["iterations"]]
    assert [r[3] or 0 for r in rows] == [len(it["selected"]) for it in result["iterations"]]
    assert (status, best) == ("finished", result["prompt"])
    assert mode == "wal"

    listing = run_arpo(capsys, "history")
    assert listing.exit_code == 0 and result["run_id"] in listing.stdout
    shown = run_arpo(capsys, "history", result["run_id"][:6], "--json")
    assert shown.exit_code == 0 and shown.json()["iterations"] == result["iterations"]


def test_init_prompt_and_steps_zero_only_score_the_given_prompt(capsys):
    outcome = run_arpo(
        capsys, "invert", SAMPLE_IMAGE, *TINY_OFFLINE, "--steps", "0", "--init-prompt", "a cat on a rug", "--json"
    )
    assert outcome.exit_code == 0, outcome.stderr
    result = outcome.json()
    assert [it["prompt"] for it in result["iterations"]] == ["a cat on a rug"]
    assert result["stopped_because"] == "reached the step limit (0)"


@pytest.mark.parametrize(
    "args, problem",
    [
        (("--framework", "fancy"), "invalid value for --framework"),
        (("--steps", "-1"), "invalid value for --steps"),
        (("--brain", "telepathy"), "invalid value for --brain: Input should be 'openai', 'vllm' or 'offline'"),
        (("--llm-max-tokens", "0"), "invalid value for --llm-max-tokens"),
        (("--scheduler", "fast"), "invalid value for --scheduler"),
    ],
)
def test_bad_flag_values_exit_2_with_one_line(capsys, args, problem):
    outcome = run_arpo(capsys, "invert", SAMPLE_IMAGE, "--models", "tiny", *args)
    assert outcome.exit_code == 2
    assert problem in outcome.stderr
    assert len(outcome.stderr.strip().splitlines()) == 1


def test_unknown_run_id_exits_2(capsys):
    outcome = run_arpo(capsys, "resume", "feedfacecafe")
    assert outcome.exit_code == 2
    assert "no run with id feedfacecafe" in outcome.stderr


def test_missing_real_weights_fail_fast_naming_the_model(capsys):
    outcome = run_arpo(capsys, "invert", SAMPLE_IMAGE, "--models", "sd15", "--brain", "offline")
    assert outcome.exit_code == 3
    assert "stable-diffusion-v1-5" in outcome.stderr and "--models tiny" in outcome.stderr
    assert len(outcome.stderr.strip().splitlines()) == 1


def test_compiling_runs_say_the_first_render_waits_for_the_compilation():
    from types import SimpleNamespace

    from arpo.app.reporting import COMPILE_NOTE, TINY_MODELS_NOTE, model_notes

    assert model_notes(SimpleNamespace(is_tiny=False), True) == [COMPILE_NOTE]
    assert model_notes(SimpleNamespace(is_tiny=True), False) == [TINY_MODELS_NOTE]
    assert model_notes(SimpleNamespace(is_tiny=False), False) == []
