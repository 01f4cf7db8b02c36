"""`arpo invert --method` and `--init` end to end with tiny models: rows in the history, one-line errors."""

import pytest
from cli_harness import SAMPLE_IMAGE, run_arpo

from arpo.storage.history import History

TINY = ("--models", "tiny")


def test_method_pez_stores_its_trajectory_and_one_scored_iteration(capsys, arpo_home):
    # --brain openai without a key: a --method run asks no brain, so it must not need one.
    outcome = run_arpo(
        capsys, "invert", SAMPLE_IMAGE, *TINY, "--brain", "openai", "--method", "pez", "--inversion-steps", "6", "--json"
    )
    assert outcome.exit_code == 0, outcome.stderr
    result = outcome.json()
    assert result["status"] == "finished" and result["stopped_because"] == "pez finished (step limit (6))"
    [iteration] = result["iterations"]
    assert iteration["index"] == 0 and iteration["prompt"] == result["prompt"] == result["last_prompt"]
    assert -1.0 <= iteration["clip_i"] <= 1.0 and -1.0 <= iteration["clip_t"] <= 1.0
    assert result["best_clip_i"] == pytest.approx(iteration["clip_i"])
    assert result["brain_calls"] == 0

    history = History.open()
    steps = history.inversion_steps(result["run_id"])
    assert [(s.method, s.step) for s in steps] == [("pez", i) for i in range(6)]
    assert all(s.loss is not None and s.prompt for s in steps)
    assert result["prompt"] in {s.prompt for s in steps}  # the best projected prompt of the trajectory
    detail = history.get_run(result["run_id"])
    assert detail.config["method"] == "pez" and detail.config["llm"]["provider"] == "offline"


@pytest.mark.parametrize("method", ["ph2p", "editor"])
def test_methods_on_the_diffusion_model_run_from_the_cli(capsys, arpo_home, method):
    outcome = run_arpo(capsys, "invert", SAMPLE_IMAGE, *TINY, "--method", method, "--inversion-steps", "2", "--json")
    assert outcome.exit_code == 0, outcome.stderr
    result = outcome.json()
    assert len(result["iterations"]) == 1 and result["prompt"]
    steps = History.open().inversion_steps(result["run_id"], method=method)
    assert [s.step for s in steps][:2] == [0, 1] and steps[0].loss is not None


def test_init_pez_writes_the_loops_first_prompt(capsys, arpo_home):
    outcome = run_arpo(
        capsys, "invert", SAMPLE_IMAGE, *TINY, "--brain", "offline", "--init", "pez",
        "--inversion-steps", "4", "--steps", "1", "--json",
    )
    assert outcome.exit_code == 0, outcome.stderr
    result = outcome.json()
    history = History.open()
    steps = history.inversion_steps(result["run_id"], method="pez")
    assert [s.step for s in steps] == [0, 1, 2, 3]
    best_step = max(steps, key=lambda s: s.details["similarity"])
    assert result["iterations"][0]["prompt"] == best_step.prompt
    assert history.get_run(result["run_id"]).config["init"] == "pez"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--method", "regressor"), "needs its checkpoint: pass --regressor"),
        (("--init", "regressor"), "needs its checkpoint: pass --regressor"),
        (("--method", "ph2p", "--init", "pez"), "does not combine with --method ph2p"),
        (("--init", "pez", "--init-prompt", "a cat"), "either --init-prompt or --init pez"),
        (("--method", "dalle"), "invalid value for --method"),
        (("--method", "pez", "--inversion-steps", "0"), "invalid value for --inversion-steps"),
    ],
)
def test_bad_inversion_flags_are_one_line_and_store_nothing(capsys, arpo_home, flags, message):
    outcome = run_arpo(capsys, "invert", SAMPLE_IMAGE, *TINY, *flags)
    assert outcome.exit_code == 2
    assert message in outcome.stderr and len(outcome.stderr.strip().splitlines()) == 1
    assert History.open().list_runs() == []


def test_resume_finishes_an_interrupted_method_run_with_its_method_not_the_loop(capsys, arpo_home):
    from arpo.core.run_config import RunConfig
    from arpo.graphs.invocation import build_context, start_run
    from arpo.tools.reference_image import load_reference_image

    history = History.open()
    config = RunConfig(models="tiny", refine="none", method="pez", inversion_steps=3)
    handle = start_run(history, config, load_reference_image(SAMPLE_IMAGE), build_context(config, history))
    history.fail_run(handle.run_id, "killed", status="interrupted")

    outcome = run_arpo(capsys, "resume", handle.run_id, "--json")
    assert outcome.exit_code == 0, outcome.stderr
    result = outcome.json()
    assert result["status"] == "finished" and result["stopped_because"].startswith("pez finished")
    assert len(result["iterations"]) == 1 and result["brain_calls"] == 0
    assert [s.step for s in history.inversion_steps(handle.run_id)] == [0, 1, 2]


def test_resume_points_a_session_to_arpo_session(capsys, arpo_home):
    from arpo.core.run_config import RunConfig
    from arpo.graphs.session_driver import SessionDriver
    from arpo.tools.reference_image import load_reference_image

    view = SessionDriver(History.open()).start(load_reference_image(SAMPLE_IMAGE), RunConfig(models="tiny", refine="none", initial_prompt="a cat"))
    outcome = run_arpo(capsys, "resume", view.run_id)
    assert outcome.exit_code == 2 and f"arpo session --resume {view.run_id}" in outcome.stderr
