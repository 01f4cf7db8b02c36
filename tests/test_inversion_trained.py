"""The vec2text-style trained inverter: corpus loading, a few training steps, inversion, save and load."""

import json

import pytest
import torch
from PIL import Image

from arpo import SAMPLE_IMAGE
from arpo.core.errors import InvalidInputError, ModelUnavailableError
from arpo.tools.inversion.base import InversionBudget
from arpo.tools.inversion.diffusion_parts import DiffusionParts
from arpo.tools.inversion.editor import EditorInverter
from arpo.tools.inversion.embedding_to_text import embedding_distance
from arpo.tools.inversion.trained_inverter import TrainedInverter
from arpo.tools.model_stack import build_model_stack
from arpo.training.inverter import (
    inverter_config_for,
    load_prompt_corpus,
    main,
    train_inverter,
)

CORPUS = ["a cat", "a dog in the snow", "oil painting of a red barn", "portrait of a woman at night"]


@pytest.fixture(scope="module")
def models():
    return build_model_stack("tiny")


@pytest.fixture(scope="module")
def parts(models):
    return DiffusionParts(models.text_to_image, "EDITOR")


@pytest.fixture(scope="module")
def trained(parts):
    config = inverter_config_for(parts, "tiny", "tiny")
    return train_inverter(CORPUS, parts, config, steps=30, corrector_steps=4, batch_size=4, lr=3e-3, seed=0)


def test_corpus_loader_reads_text_and_jsonl(tmp_path):
    text = tmp_path / "prompts.txt"
    text.write_text("a cat\n\n  a dog  \n", encoding="utf-8")
    assert load_prompt_corpus(text) == ["a cat", "a dog"]
    jsonl = tmp_path / "prompts.jsonl"
    jsonl.write_text('{"prompt": "a cat"}\n"a dog"\n{"caption": "a barn", "id": 3}\n\n', encoding="utf-8")
    assert load_prompt_corpus(jsonl) == ["a cat", "a dog", "a barn"]
    jsonl.write_text('{"prompt": "a cat"}\n{"id": 3}\n', encoding="utf-8")
    with pytest.raises(InvalidInputError, match="prompts.jsonl:2"):
        load_prompt_corpus(jsonl)
    jsonl.write_text("{not json\n", encoding="utf-8")
    with pytest.raises(InvalidInputError, match="not JSON"):
        load_prompt_corpus(jsonl)
    with pytest.raises(InvalidInputError, match="does not exist"):
        load_prompt_corpus(tmp_path / "missing.txt")


def test_training_lowers_both_losses(trained):
    _, log = trained
    assert len(log.zero_step) == 30 and len(log.corrector) == 4
    assert sum(log.zero_step[-5:]) / 5 < sum(log.zero_step[:5]) / 5
    assert log.corrector[-1] < log.corrector[0]


def test_trained_inverter_keeps_the_hypothesis_nearest_the_target(trained, parts):
    inverter, _ = trained
    target = parts.encode_prompts(["a dog in the snow"])[0]
    rounds = []
    recovery = inverter.recover(target, parts, start_prompts=["portrait"], on_round=rounds.append)
    assert recovery.prompt
    measured = float(embedding_distance(target, parts.encode_prompts([recovery.prompt]))[0])
    assert recovery.distance == pytest.approx(measured, rel=1e-5)
    assert recovery.distance <= recovery.start_distance
    assert recovery.distance <= float(embedding_distance(target, parts.encode_prompts(["portrait"]))[0])
    assert len(rounds) == inverter.config.correction_rounds
    assert [r["distance"] for r in rounds] == sorted((r["distance"] for r in rounds), reverse=True)


def test_saved_inverter_loads_and_inverts_identically(trained, parts, tmp_path):
    inverter, _ = trained
    target = parts.encode_prompts(["a cat"])[0]
    folder = inverter.save(tmp_path / "inverter")
    loaded = TrainedInverter.load(folder, parts.tokenizer)
    assert loaded.recover(target, parts, seed=1).prompt == inverter.recover(target, parts, seed=1).prompt
    assert json.loads((folder / "inverter.json").read_text())["embedding_width"] == 32

    with pytest.raises(ModelUnavailableError, match="no trained EDITOR inverter"):
        TrainedInverter.load(tmp_path / "nothing", parts.tokenizer)
    with pytest.raises(InvalidInputError, match="32-wide"):
        inverter.recover(torch.zeros(77, 48), parts)


def test_editor_runs_with_the_trained_backend(trained, models):
    inverter, _ = trained
    reference = Image.open(SAMPLE_IMAGE).convert("RGB")
    result = EditorInverter(denoising_steps=2, initial_prompt="a cat", text_recovery=inverter).invert(
        reference, models, seed=0, budget=InversionBudget(max_steps=2)
    )
    assert result.details["text_recovery"] == "trained"
    assert result.prompt and result.score == pytest.approx(-result.details["embedding_distance"])


def test_training_entry_point_writes_a_loadable_inverter(tmp_path, capsys, parts):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(CORPUS), encoding="utf-8")
    out = tmp_path / "trained"
    code = main([str(corpus), "--out", str(out), "--models", "tiny", "--size", "tiny",
                 "--steps", "2", "--corrector-steps", "1", "--batch-size", "2"])
    assert code == 0 and "saved to" in capsys.readouterr().out
    assert TrainedInverter.load(out, parts.tokenizer).config.d_model == 32
    assert main([str(tmp_path / "none.txt"), "--out", str(out), "--models", "tiny"]) == 2


def test_invert_method_editor_uses_a_trained_inverter_given_on_the_command_line(trained, tmp_path, capsys):
    from cli_harness import run_arpo

    inverter, _ = trained
    folder = inverter.save(tmp_path / "inverter")
    outcome = run_arpo(
        capsys, "invert", SAMPLE_IMAGE, "--models", "tiny", "--method", "editor", "--inversion-steps", "2",
        "--editor-inverter", str(folder), "--json",
    )
    assert outcome.exit_code == 0, outcome.stderr
    assert outcome.json()["prompt"]
    missing = run_arpo(capsys, "invert", SAMPLE_IMAGE, "--models", "tiny", "--method", "editor",
                       "--editor-inverter", str(tmp_path / "nothing"))  # fails before optimising a step
    assert missing.exit_code == 3 and "no trained EDITOR inverter" in missing.stderr


def test_editor_refuses_an_inverter_trained_on_another_text_encoder_before_optimising(trained, tmp_path):
    inverter, _ = trained
    folder = inverter.save(tmp_path / "inverter")  # trained on the SD 1.5-shaped tiny encoder (32 wide)
    steps = []
    editor = EditorInverter(initial_prompt="a cat", trained_inverter_folder=str(folder))
    with pytest.raises(InvalidInputError, match="reads 32-wide embeddings .* tiny-sdxl's are 64-wide"):
        editor.invert(
            Image.open(SAMPLE_IMAGE).convert("RGB"), build_model_stack("tiny-sdxl"),
            budget=InversionBudget(max_steps=2), on_step=steps.append,
        )
    assert steps == []  # refused before any optimisation step
