"""PEZ, PH2P and EDITOR on the tiny models: losses fall, tokens are real, budgets hold, seeds repeat."""

import pytest
import torch
from PIL import Image

from arpo import SAMPLE_IMAGE
from arpo.errors import InvalidInputError
from arpo.tools.inversion.base import InversionBudget
from arpo.tools.inversion.editor import EditorInverter
from arpo.tools.inversion.pez import PezInverter
from arpo.tools.inversion.ph2p import Ph2pInverter
from arpo.tools.inversion.training_free_inverter import TrainingFreeInverter
from arpo.tools.inversion.vocabulary_projection import undecodable_token_ids
from arpo.tools.model_stack import build_model_stack

PHRASES = ["a cat", "a dog", "oil painting", "in the snow", "portrait", "blue sky", "red barn", "at night"]


@pytest.fixture(scope="module")
def models():
    return build_model_stack("tiny")


@pytest.fixture(scope="module")
def reference():
    return Image.open(SAMPLE_IMAGE).convert("RGB")


def _retokenized(tokenizer, prompt):
    return tokenizer(prompt, add_special_tokens=False).input_ids


# ---- PEZ ---------------------------------------------------------------------------------------------


def test_pez_returns_real_tokens_and_the_best_step(models, reference):
    steps = []
    result = PezInverter(prompt_len=6).invert(
        reference, models, seed=3, budget=InversionBudget(max_steps=25), on_step=steps.append
    )
    ids = result.details["token_ids"]
    banned = {49406, 49407, *undecodable_token_ids(models.clip.tokenizer)}
    assert len(ids) == 6 and all(0 < token < 49406 and token not in banned for token in ids)
    assert result.prompt and "\ufffd" not in result.prompt and "</w>" not in result.prompt
    # The returned prompt is the best projected one: its similarity is the highest recorded.
    similarities = [step.details["similarity"] for step in result.steps]
    assert result.score == pytest.approx(max(similarities))
    assert result.prompt == result.steps[result.details["best_step"]].prompt
    assert [step.step for step in steps] == list(range(25))
    # Optimising raised the similarity above where the random start was.
    assert max(similarities) > similarities[0]
    # When the text reads back as the same tokens, CLIP scores the text exactly as PEZ scored it.
    if _retokenized(models.text_to_image.pipeline.tokenizer, result.prompt) == ids:
        rescored = models.clip.text_image_similarity(models.clip.encode_images([reference])[0], [result.prompt])[0]
        assert rescored == pytest.approx(result.score, abs=1e-4)


def test_pez_is_deterministic_under_a_seed_and_honours_the_time_budget(models, reference):
    first = PezInverter(prompt_len=4).invert(reference, models, seed=7, budget=InversionBudget(max_steps=5))
    again = PezInverter(prompt_len=4).invert(reference, models, seed=7, budget=InversionBudget(max_steps=5))
    other = PezInverter(prompt_len=4).invert(reference, models, seed=8, budget=InversionBudget(max_steps=5))
    assert [s.prompt for s in first.steps] == [s.prompt for s in again.steps]
    assert [s.loss for s in first.steps] == [s.loss for s in again.steps]
    assert [s.prompt for s in first.steps] != [s.prompt for s in other.steps]

    timed = PezInverter(prompt_len=4).invert(
        reference, models, seed=7, budget=InversionBudget(max_steps=100000, max_seconds=0.3)
    )
    assert 1 <= len(timed.steps) < 100000
    assert timed.seconds < 3.0
    assert timed.details["stopped_because"].startswith("time limit")


def test_pez_refuses_a_prompt_longer_than_the_context(models, reference):
    with pytest.raises(InvalidInputError, match="does not fit"):
        PezInverter(prompt_len=80).invert(reference, models, budget=InversionBudget(max_steps=1))


# ---- PH2P --------------------------------------------------------------------------------------------


def _ph2p(projection, **kwargs):
    return Ph2pInverter(prompt_len=5, lbfgs_iterations=4, projection=projection, rescored=2, **kwargs)


def test_ph2p_lbfgs_lowers_the_denoising_loss_and_returns_vocabulary_tokens(models, reference):
    result = _ph2p("delayed").invert(reference, models, seed=1, budget=InversionBudget(max_steps=3))
    assert len(result.steps) == 3
    for step in result.steps:  # within each step (one timestep and noise) L-BFGS descends
        assert step.details["optimised_loss_after"] < step.details["optimised_loss_before"]
    tokenizer = models.text_to_image.pipeline.tokenizer
    banned = {tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id}
    assert len(result.details["final_token_ids"]) == 5
    assert not banned & set(result.details["final_token_ids"])
    # The winner was chosen by regenerating candidates and comparing images with the reference.
    rescored = result.details["rescored"]
    assert 1 <= len(rescored) <= 2 and rescored[0]["prompt"] == result.prompt
    assert result.score == pytest.approx(max(entry["clip_i"] for entry in rescored))
    assert all(step.prompt and "\ufffd" not in step.prompt for step in result.steps)


def test_delayed_and_immediate_projection_agree_at_the_start_and_then_part(models, reference):
    budget = InversionBudget(max_steps=2)
    delayed = _ph2p("delayed").invert(reference, models, seed=5, budget=budget)
    immediate = _ph2p("immediate").invert(reference, models, seed=5, budget=budget)
    # Same seed: the slots start on the same vocabulary tokens, where both objectives coincide.
    assert delayed.steps[0].details["timestep"] == immediate.steps[0].details["timestep"]
    assert delayed.steps[0].details["optimised_loss_before"] == pytest.approx(
        immediate.steps[0].details["optimised_loss_before"], rel=1e-5
    )
    # Delayed projection descends in continuous space; immediate projection only ever sees tokens,
    # whose loss is flat under small moves, so L-BFGS cannot lower it within a step.
    assert delayed.steps[0].details["optimised_loss_after"] < delayed.steps[0].details["optimised_loss_before"]
    for step in immediate.steps:
        assert step.details["optimised_loss_after"] == pytest.approx(step.details["optimised_loss_before"])
    assert [s.details["optimised_loss_after"] for s in delayed.steps] != [
        s.details["optimised_loss_after"] for s in immediate.steps
    ]


def test_ph2p_and_editor_refuse_two_encoder_pipelines(models, reference):
    pipeline = models.text_to_image.pipeline
    pipeline.text_encoder_2 = pipeline.text_encoder  # what an SDXL pipeline carries
    try:
        for inverter in (_ph2p("delayed"), EditorInverter(initial_prompt="a cat")):
            with pytest.raises(InvalidInputError, match="two \\(SDXL\\)"):
                inverter.invert(reference, models, budget=InversionBudget(max_steps=1))
    finally:
        del pipeline.text_encoder_2


# ---- EDITOR ------------------------------------------------------------------------------------------


def test_editor_optimised_embedding_reconstructs_better_than_its_start(models, reference):
    editor = EditorInverter(denoising_steps=2, lr=0.05)
    embedding, losses = editor.optimise_embedding(reference, models, "a cat in the snow", seed=2, steps=6)
    assert embedding.shape == (1, 77, 32)
    assert losses[-1] < losses[0]
    assert all(later <= earlier + 1e-6 for earlier, later in zip(losses, losses[1:]))

    from arpo.tools.inversion.editor import Reconstruction
    from arpo.tools.inversion.diffusion_parts import DiffusionParts

    parts = DiffusionParts(models.text_to_image, "EDITOR")
    check = Reconstruction(parts, reference, 2, 2, "latent")
    with torch.no_grad():
        start_loss = float(check.loss(parts.encode_prompts(["a cat in the snow"])))
        end_loss = float(check.loss(embedding))
    assert end_loss < start_loss


def test_editor_end_to_end_with_training_free_text(models, reference):
    steps = []
    editor = EditorInverter(
        denoising_steps=2,
        initial_prompt="a dog",
        text_recovery=TrainingFreeInverter(phrases=PHRASES, rounds=3),
    )
    result = editor.invert(reference, models, seed=0, budget=InversionBudget(max_steps=3), on_step=steps.append)
    phases = [step.details["phase"] for step in steps]
    assert phases[:3] == ["reconstruction"] * 3 and set(phases[3:]) <= {"embedding-to-text"}
    assert result.details["best_reconstruction_loss"] <= result.details["initial_reconstruction_loss"]
    assert result.details["optimisation_steps"] == 3
    assert result.prompt and result.score == pytest.approx(-result.details["embedding_distance"])
    # Deterministic under the seed.
    again = editor.invert(reference, models, seed=0, budget=InversionBudget(max_steps=3))
    assert again.prompt == result.prompt and [s.loss for s in again.steps] == [s.loss for s in result.steps]


# ---- training-free embedding-to-text ---------------------------------------------------------------


def test_training_free_inverter_moves_nearer_the_target(models):
    from arpo.tools.inversion.diffusion_parts import DiffusionParts
    from arpo.tools.inversion.embedding_to_text import embedding_distance

    parts = DiffusionParts(models.text_to_image, "EDITOR")
    target = parts.encode_prompts(["a cat, oil painting, at night"])[0]
    rounds = []
    recovery = TrainingFreeInverter(phrases=PHRASES, rounds=6).recover(
        target, parts, start_prompts=["a dog"], on_round=rounds.append
    )
    start = float(embedding_distance(target, parts.encode_prompts(["a dog"]))[0])
    end = float(embedding_distance(target, parts.encode_prompts([recovery.prompt]))[0])
    assert end == pytest.approx(recovery.distance, rel=1e-5)
    assert end < start and recovery.distance <= recovery.start_distance
    assert [r["distance"] for r in rounds] == sorted((r["distance"] for r in rounds), reverse=True)
    assert "cat" in recovery.prompt


def test_training_free_inverter_uses_rewrites_from_a_language_model(models):
    from arpo.tools.inversion.diffusion_parts import DiffusionParts

    parts = DiffusionParts(models.text_to_image, "EDITOR")
    target = parts.encode_prompts(["a red barn in the snow"])[0]
    asked = []

    def rewriter(prompt, count):
        asked.append(prompt)
        return ["a red barn in the snow"]

    recovery = TrainingFreeInverter(phrases=["portrait"], rounds=2, rewriter=rewriter).recover(
        target, parts, start_prompts=["a dog"]
    )
    assert asked and recovery.prompt == "a red barn in the snow"
    assert recovery.distance == pytest.approx(0.0, abs=1e-6)
