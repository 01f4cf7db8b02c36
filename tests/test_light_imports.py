"""Commands that need no model must not pay for importing one, and a plain inversion imports only what it
uses. Each command runs in a fresh interpreter (this test process has everything loaded already), which
writes the names of every module it imported when it exits."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from arpo import SAMPLE_IMAGE

MODEL_LIBRARIES = ("torch", "diffusers", "transformers", "open_clip", "gradio")
# What a plain `arpo invert` has no use for: the web UI, evaluation metrics and training code.
NOT_FOR_INVERT = (
    "gradio",
    "lpips",
    "bert_score",
    "arpo.eval.metrics",
    "arpo.training",
)

# Runs the console entry point with the given arguments and, at exit (also after sys.exit), writes the
# sorted names in sys.modules to the file named by ARPO_TEST_MODULES_OUT.
AUDITED_ARPO = """
import atexit, json, os, sys
def _write_modules():
    with open(os.environ["ARPO_TEST_MODULES_OUT"], "w") as out:
        json.dump(sorted(sys.modules), out)
atexit.register(_write_modules)
sys.argv = ["arpo", *sys.argv[1:]]
from arpo.app.cli import main
main()
"""


def imported_by(home: Path, *args: str) -> tuple[subprocess.CompletedProcess, set[str]]:
    """Run `arpo ARGS` in a fresh interpreter; return the finished process and the modules it imported."""
    modules_file = home / "modules.json"
    env = dict(os.environ, ARPO_HOME=str(home), ARPO_TEST_MODULES_OUT=str(modules_file), HF_HUB_OFFLINE="1")
    env.pop("OPENAI_API_KEY", None)
    done = subprocess.run(
        [sys.executable, "-c", AUDITED_ARPO, *args], env=env, capture_output=True, text=True, timeout=300
    )
    return done, set(json.loads(modules_file.read_text()))


def loaded(modules: set[str], packages: tuple[str, ...]) -> list[str]:
    """The packages (or any of their submodules) present among ``modules``."""
    return [name for name in packages if any(m == name or m.startswith(name + ".") for m in modules)]


@pytest.fixture(scope="module")
def finished_tiny_run(tmp_path_factory):
    """A plain one-step offline inversion on the tiny stack, run once for the module: its home, run id and
    imported modules."""
    home = tmp_path_factory.mktemp("light-imports-home")
    done, modules = imported_by(home, "invert", str(SAMPLE_IMAGE), "--models", "tiny", "--brain", "offline",
                                "--steps", "1", "--json")
    assert done.returncode == 0, done.stderr
    return home, json.loads(done.stdout)["run_id"], modules


def test_plain_invert_imports_no_ui_metrics_or_training(finished_tiny_run):
    _, _, modules = finished_tiny_run
    assert "torch" in modules  # the audit really saw the inversion's own imports
    assert loaded(modules, NOT_FOR_INVERT) == []


@pytest.mark.parametrize("args", [("--help",), ("history",), ("history", "{run_id}"), ("history", "{run_id}", "--json")])
def test_light_commands_import_no_model_library(finished_tiny_run, args):
    home, run_id, _ = finished_tiny_run
    done, modules = imported_by(home, *(a.format(run_id=run_id) for a in args))
    assert done.returncode == 0, done.stderr
    if "history" in args:
        assert run_id in done.stdout  # the command did its work, not only an early exit
    assert loaded(modules, MODEL_LIBRARIES) == []
