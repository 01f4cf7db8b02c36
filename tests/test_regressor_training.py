"""Training the regressor on rendered shapes: it learns, its curriculum runs as specified, checkpoints round-trip."""

from __future__ import annotations

import json

import numpy as np
import pytest
from regressor_shapes import write_shapes

from arpo.core.errors import InvalidInputError
from arpo.tools.regressor.checkpoint import load_checkpoint, save_checkpoint
from arpo.tools.regressor.sentence_space import HashedWordSpace, load_sentence_space
from arpo.training.regressor.datasets import load_manifest, open_image
from arpo.training.regressor.loop import TrainingOptions, train_regressor


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return load_manifest(write_shapes(tmp_path_factory.mktemp("shapes"), per_combination=4))


@pytest.fixture(scope="module")
def minilm():
    return load_sentence_space("minilm", device="cpu")


def test_training_beats_the_untrained_model_and_the_mean_prompt(shapes, minilm):
    options = TrainingOptions(epochs=20, batch_size=8, learning_rate=3e-3, val_split=0.25, seed=0, device="cpu")
    result = train_regressor(shapes, backbone="tiny", space=minilm, options=options)

    targets = minilm.encode([pair.prompt for pair in shapes])
    mean_prompt = targets[result.train_indices].mean(axis=0)
    mean_prompt /= np.linalg.norm(mean_prompt)
    mean_baseline = float((targets[result.val_indices] @ mean_prompt).mean())

    assert result.model.config.embedding_dim == 384
    assert abs(result.untrained_val_cosine) < 0.2
    assert result.final_val_cosine > result.untrained_val_cosine + 0.6
    # Not just the average prompt: the predictions carry each image's colour and shape.
    assert result.final_val_cosine > mean_baseline + 0.05
    assert [report.epoch for report in result.reports] == list(range(1, 21))

    # Retrieval from the 12 prompts: the colour is always right, the whole prompt far above chance (1/12).
    predicted = result.model.predict([open_image(shapes[index].image) for index in result.val_indices])
    best = [result.bank.top_k(row, 1)[0].prompt for row in predicted]
    truth = [shapes[index].prompt for index in result.val_indices]
    assert np.mean([b.split()[1] == t.split()[1] for b, t in zip(best, truth)]) >= 0.9
    assert np.mean([b == t for b, t in zip(best, truth)]) >= 0.3
    assert {"red", "blue", "circle", "square"} <= set(result.vocabulary.words)
    assert "a" not in result.vocabulary.words


def test_curriculum_first_measures_difficulty_then_introduces_chunks_in_order(shapes):
    options = TrainingOptions(epochs=3, batch_size=12, val_split=0.25, curriculum="thirds", device="cpu")
    result = train_regressor(shapes, backbone="tiny", space=HashedWordSpace(), options=options)

    phases = [(report.phase, report.epoch, report.stage) for report in result.reports]
    assert phases == [
        ("difficulty", 1, None), ("difficulty", 2, None), ("difficulty", 3, None),
        ("train", 1, "easy"), ("train", 2, "easy+medium"), ("train", 3, "all"),
    ]
    assert result.chunk_sizes == {"easy": 12, "medium": 12, "hard": 12}
    assert result.difficulty.shape == (36,)


def test_thresholds_curriculum_uses_the_given_thresholds(shapes):
    options = TrainingOptions(
        epochs=2, batch_size=12, val_split=0.25, curriculum="thresholds", thresholds=(2.0, -2.0), device="cpu"
    )
    result = train_regressor(shapes, backbone="tiny", space=HashedWordSpace(), options=options)
    # No cosine reaches 2: nothing is easy, all is medium; the easy stage's steps go to the next stage.
    assert result.chunk_sizes == {"easy": 0, "medium": 36, "hard": 0}
    assert [report.stage for report in result.reports if report.phase == "train"] == ["easy+medium", "all"]


def test_checkpoint_round_trip_predicts_the_same(shapes, tmp_path):
    options = TrainingOptions(epochs=1, batch_size=16, val_split=0.25, vocabulary_size=5, device="cpu")
    result = train_regressor(shapes, backbone="tiny", space=HashedWordSpace(), options=options)
    folder = save_checkpoint(tmp_path / "ckpt", result.model, result.vocabulary, result.bank)

    loaded = load_checkpoint(folder / "weights.safetensors", device="cpu")
    images = [open_image(pair.image) for pair in shapes[:5]]
    np.testing.assert_allclose(loaded.model.predict(images), result.model.predict(images), atol=1e-6)
    assert loaded.config == result.model.config
    assert loaded.vocabulary.words == result.vocabulary.words and len(loaded.vocabulary) == 5
    assert loaded.bank.prompts == result.bank.prompts and len(loaded.bank) == 12
    stored = json.loads((folder / "regressor.json").read_text())
    assert stored["config"]["backbone"] == "tiny" and stored["config"]["target_space"] == "tiny"
    assert stored["config"]["extra"]["training"]["train_pairs"] == 36


def test_damaged_checkpoints_and_bad_options_are_one_line_errors(tmp_path, shapes):
    (tmp_path / "regressor.json").write_text("{not json")
    with pytest.raises(InvalidInputError, match="Cannot read"):
        load_checkpoint(tmp_path)
    with pytest.raises(InvalidInputError, match="not a regressor checkpoint"):
        load_checkpoint(tmp_path / "elsewhere")
    with pytest.raises(InvalidInputError, match="val-split"):
        train_regressor(shapes, backbone="tiny", space=HashedWordSpace(), options=TrainingOptions(val_split=1.5))
    with pytest.raises(InvalidInputError, match="curriculum"):
        train_regressor(shapes, backbone="tiny", space=HashedWordSpace(), options=TrainingOptions(curriculum="sideways"))
