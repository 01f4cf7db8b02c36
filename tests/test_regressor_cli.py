"""`arpo regressor train/predict/adapt` end to end, and the regressor as a PromptInverter."""

from __future__ import annotations

import json

import pytest
from cli_harness import run_arpo
from PIL import Image
from regressor_shapes import write_shapes

from arpo.core.errors import InvalidInputError
from arpo.core.run_config import RunConfig
from arpo.storage.history import History
from arpo.tools.inversion.base import InversionStep
from arpo.tools.regressor.inverter import RegressorInverter


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Rendered shapes and their manifest, in a folder the checkpoint is written beside."""
    root = tmp_path_factory.mktemp("regressor-cli")
    manifest = write_shapes(root / "shapes", per_combination=3)
    return root, manifest


def _train(capsys, root, manifest, *extra):
    return run_arpo(
        capsys, "regressor", "train", manifest, "--out", root / "ckpt", "--backbone", "tiny",
        "--target-space", "tiny", "--epochs", "12", "--batch-size", "6", "--lr", "0.003",
        "--val-split", "0.25", *extra,
    )


def test_train_then_predict_from_the_command_line(capsys, trained):
    root, manifest = trained
    outcome = _train(capsys, root, manifest, "--json")
    assert outcome.exit_code == 0, outcome.stderr
    summary = outcome.json()
    assert summary["train_pairs"] == 27 and summary["val_pairs"] == 9
    assert summary["final_val_cosine"] > summary["untrained_val_cosine"] + 0.3
    assert "epoch 12: loss" in outcome.stderr and "val cosine" in outcome.stderr
    assert (root / "ckpt" / "regressor.json").is_file()

    predicted = run_arpo(capsys, "regressor", "predict", root / "shapes" / "red-circle-0.png",
                         "--checkpoint", root / "ckpt", "--top-k", "3", "--json")
    assert predicted.exit_code == 0, predicted.stderr
    result = predicted.json()
    assert len(result["top_k"]) == 3 and result["prompt"] == result["top_k"][0]["prompt"]
    assert result["prompt_bank"] == "checkpoint" and result["prompt_bank_size"] == 12
    similarities = [match["similarity"] for match in result["top_k"]]
    assert similarities == sorted(similarities, reverse=True)

    bank = root / "bank.txt"
    bank.write_text("a red circle\na purple hexagon\n")
    text = run_arpo(capsys, "regressor", "predict", root / "shapes" / "red-circle-0.png",
                    "--checkpoint", root / "ckpt", "--prompt-bank", bank, "--top-k", "2")
    assert text.exit_code == 0, text.stderr
    lines = text.stdout.strip().splitlines()
    assert len(lines) == 2 and {line.split("  ", 1)[1] for line in lines} == {"a red circle", "a purple hexagon"}

    adapted = run_arpo(capsys, "regressor", "adapt", manifest, root / "shapes", "--checkpoint", root / "ckpt",
                       "--out", root / "adapter.npz", "--clusters", "6", "--gamma", "1")
    assert adapted.exit_code == 0, adapted.stderr
    assert "6 centroids, 36 target images" in adapted.stdout
    with_adapter = run_arpo(capsys, "regressor", "predict", root / "shapes" / "red-circle-0.png",
                            "--checkpoint", root / "ckpt", "--adapter", root / "adapter.npz", "--json")
    assert with_adapter.exit_code == 0 and with_adapter.json()["kernel_adapted"] is True

    # Default settings (γ from the data): different images keep different adapted predictions. With the
    # paper's γ = 0.001 as the default, both got the same five prompts with scores 1e-7 apart.
    adapted = run_arpo(capsys, "regressor", "adapt", manifest, root / "shapes", "--checkpoint", root / "ckpt",
                       "--out", root / "default-adapter.npz", "--clusters", "6")
    assert adapted.exit_code == 0, adapted.stderr
    scores = {}
    for name in ("red-circle-0", "yellow-square-0"):
        predicted = run_arpo(capsys, "regressor", "predict", root / "shapes" / f"{name}.png", "--checkpoint",
                             root / "ckpt", "--adapter", root / "default-adapter.npz", "--json")
        assert predicted.exit_code == 0, predicted.stderr
        scores[name] = {match["prompt"]: match["similarity"] for match in predicted.json()["top_k"]}
    shared = scores["red-circle-0"].keys() & scores["yellow-square-0"].keys()
    assert shared != scores["red-circle-0"].keys() or max(
        abs(scores["red-circle-0"][prompt] - scores["yellow-square-0"][prompt]) for prompt in shared
    ) > 1e-3

    # The same checkpoint initialises the loop through RunConfig (--init/--method regressor).
    inverter = RegressorInverter.from_config(RunConfig(models="tiny", regressor=str(root / "ckpt"),
                                                       prompt_bank=str(bank)))
    steps: list[InversionStep] = []
    inversion = inverter.invert(Image.open(root / "shapes" / "red-circle-0.png"), None, on_step=steps.append)
    assert inversion.method == "regressor" and inversion.prompt in {"a red circle", "a purple hexagon"}
    assert inversion.score == pytest.approx(inversion.details["top_k"][0]["similarity"])
    assert [step.prompt for step in steps] == [inversion.prompt]
    json.dumps(inversion.details)  # plain JSON values only

    # ... and from the command line: the loop's first prompt is the regressor's best retrieved prompt.
    looped = run_arpo(capsys, "invert", root / "shapes" / "red-circle-0.png", "--models", "tiny", "--brain", "offline",
                      "--steps", "1", "--init", "regressor", "--regressor", root / "ckpt", "--json")
    assert looped.exit_code == 0, looped.stderr
    first_prompt = looped.json()["iterations"][0]["prompt"]
    [step] = History.open().inversion_steps(looped.json()["run_id"], method="regressor")
    training_prompts = json.loads((root / "ckpt" / "prompt_bank.json").read_text())
    assert first_prompt == step.prompt and first_prompt in training_prompts


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "missing.jsonl", "--out", "x"], "does not exist"),
        (["train", "m.jsonl", "--out", "x", "--backbone", "resnet"], "Unknown backbone"),
        (["train", "m.jsonl", "--out", "x", "--curriculum", "backwards"], "Unknown curriculum"),
        (["train", "m.jsonl", "--out", "x", "--curriculum", "thresholds", "--thresholds", "high"], "HIGH,LOW"),
        (["predict", "img.png", "--checkpoint", "nowhere"], "not a regressor checkpoint"),
        (["predict", "nothing.png", "--checkpoint", "nowhere"], "nothing.png"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(capsys, tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    Image.new("RGB", (8, 8)).save(tmp_path / "img.png")
    (tmp_path / "m.jsonl").write_text('{"image": "img.png", "prompt": "x"}\n')
    outcome = run_arpo(capsys, "regressor", *args)
    assert outcome.exit_code == 2
    assert message in outcome.stderr and len(outcome.stderr.strip().splitlines()) == 1


def test_inverter_needs_a_checkpoint():
    with pytest.raises(InvalidInputError, match="--regressor"):
        RegressorInverter.from_config(RunConfig(models="tiny", method="regressor"))
