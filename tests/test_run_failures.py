"""Failures that are not arpo's own: a run that breaks in any step is marked failed with a one-line
reason, exits 3, shows the reason in the history, and finishes with `arpo resume`."""

import sqlite3

from cli_harness import SAMPLE_IMAGE, run_arpo

from arpo.tools.text_to_image import TextToImage


def test_a_crash_in_a_step_fails_the_run_in_one_line_and_resume_finishes_it(capsys, arpo_home, monkeypatch):
    real_generate = TextToImage.generate
    renders = []

    def generate_then_break(self, prompt, seed):
        renders.append(prompt)
        if len(renders) == 2:  # the first iteration is rendered and stored; the second render breaks
            raise RuntimeError("CUDA error: an illegal memory access was encountered\n(more detail)")
        return real_generate(self, prompt, seed)

    monkeypatch.setattr(TextToImage, "generate", generate_then_break)
    monkeypatch.delenv("ARPO_DEBUG", raising=False)  # with it set, the original error is re-raised
    failed = run_arpo(capsys, "invert", SAMPLE_IMAGE, "--models", "tiny", "--brain", "offline", "--steps", "2",
                      "--init-prompt", "a cat")

    assert failed.exit_code == 3
    error_lines = [line for line in failed.stderr.splitlines() if line.startswith("arpo:")]
    assert len(error_lines) == 1 and "Traceback" not in failed.stderr
    line = error_lines[0]
    assert "RuntimeError: CUDA error: an illegal memory access was encountered (more detail)" in line
    assert "in step generate" in line and "arpo resume" in line
    with sqlite3.connect(arpo_home / "arpo.db") as db:
        run_id, status, error = db.execute("SELECT id, status, error FROM runs").fetchone()
    assert status == "failed"
    assert error.startswith("in step generate: RuntimeError: CUDA error")
    assert "\n" not in error

    shown = run_arpo(capsys, "history", run_id)
    assert shown.exit_code == 0
    assert f"failed: {error}" in shown.stdout.splitlines()
    as_json = run_arpo(capsys, "history", run_id, "--json").json()
    assert as_json["status"] == "failed" and as_json["error"] == error

    monkeypatch.setattr(TextToImage, "generate", real_generate)
    resumed = run_arpo(capsys, "resume", run_id, "--json")

    assert resumed.exit_code == 0, resumed.stderr
    result = resumed.json()
    assert result["status"] == "finished" and result["error"] is None
    indexes = [iteration["index"] for iteration in result["iterations"]]
    assert indexes == list(range(len(indexes))) and len(indexes) >= 2
    assert "failed:" not in run_arpo(capsys, "history", run_id).stdout


def test_enhanced_framework_with_an_offline_vlm_is_refused_before_anything_runs(capsys, arpo_home):
    outcome = run_arpo(capsys, "invert", SAMPLE_IMAGE, "--models", "tiny", "--brain", "offline", "--framework", "enhanced")

    assert outcome.exit_code == 2
    assert outcome.stderr.strip().splitlines() == [
        "arpo: error: the enhanced framework needs a VLM to describe the images, but the VLM brain is "
        "offline; set --vlm-brain (or --brain) to openai or vllm, or use --framework vanilla"
    ]
    database = arpo_home / "arpo.db"
    assert not database.exists() or sqlite3.connect(database).execute("SELECT count(*) FROM runs").fetchone()[0] == 0
