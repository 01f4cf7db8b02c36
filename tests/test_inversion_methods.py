"""PEZ, PH2P and EDITOR on the tiny models: losses fall, tokens are real, budgets hold, seeds repeat."""

import pytest
import torch
from PIL import Image

from arpo import SAMPLE_IMAGE
from arpo.core.errors import InvalidInputError
from arpo.tools.inversion.base import InversionBudget
from arpo.tools.inversion.editor import EditorInverter
from arpo.tools.inversion.pez import PezInverter
from arpo.tools.inversion.ph2p import Ph2pInverter
from arpo.tools.inversion.training_free_inverter import TrainingFreeInverter
from arpo.tools.inversion.vocabulary_projection import slot_token_ids, undecodable_token_ids
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
    # The winner was chosen by regenerating the shortlist and comparing images with the reference.
    rescored = result.details["rescored"]
    assert 1 <= len(rescored) <= 2 and rescored[0]["prompt"] == result.prompt
    assert {entry["prompt"] for entry in rescored} == {entry["prompt"] for entry in result.details["shortlist"]}
    assert result.score == pytest.approx(max(entry["clip_i"] for entry in rescored))
    assert all(step.prompt and "\ufffd" not in step.prompt for step in result.steps)


def test_delayed_projection_snaps_the_slots_back_onto_tokens_after_every_update(models, reference):
    search = _ph2p("delayed").start_search(reference, models, seed=1)
    table = models.text_to_image.pipeline.text_encoder.get_input_embeddings().weight
    assert torch.equal(search.soft.detach(), table[search.ids].float())
    changed = 0
    for index in range(4):
        outcome = search.step(index)
        # L-BFGS moved the slots in continuous space, then they were put back exactly on real tokens:
        # the point the next step starts from is one a written prompt reaches.
        assert outcome["moved"] > 0
        assert torch.equal(search.soft.detach(), table[search.ids].float())
        assert outcome["projected_loss"] >= outcome["optimised_loss_after"] - 1e-6 or outcome["tokens_changed"] > 0
        changed += outcome["tokens_changed"]
    assert changed > 0  # the updates are large enough to reach other tokens


def test_immediate_projection_is_the_first_order_baseline_on_projected_tokens(models, reference):
    delayed = _ph2p("delayed").start_search(reference, models, seed=5)
    immediate = _ph2p("immediate", first_order_lr=0.1).start_search(reference, models, seed=5)
    start = immediate.soft.detach().clone()
    first = immediate.step(0)
    # Same seed: both start on the same tokens and draw the same timestep, so the loss the first
    # gradient is taken at (the projected tokens') is the same number.
    assert first["optimised_loss_before"] == pytest.approx(delayed.step(0)["optimised_loss_before"], rel=1e-5)
    # One Adam step on the continuous slots: every coordinate moves by about the learning rate, and the
    # slots are not snapped (the baseline keeps its continuous vectors between steps).
    moved = (immediate.soft.detach() - start).abs()
    assert moved.max() <= 0.1 + 1e-4 and moved.mean() > 0.05
    table = models.text_to_image.pipeline.text_encoder.get_input_embeddings().weight
    assert not torch.equal(immediate.soft.detach(), table[immediate.ids].float())
    assert torch.equal(immediate.ids, immediate.projector.nearest(immediate.soft))
    outcomes = [first] + [immediate.step(index) for index in range(1, 4)]
    assert sum(outcome["tokens_changed"] for outcome in outcomes) > 0


def test_ph2p_shortlist_is_ordered_by_the_loss_averaged_over_fixed_timesteps(models, reference):
    inverter = Ph2pInverter(prompt_len=4, lbfgs_iterations=3, rescored=3, ranking_timesteps=3)
    search = inverter.start_search(reference, models, seed=4)
    assert search.timestep_range == (500, 900)
    assert search.ranking.timesteps.tolist() == [500, 700, 899]  # evenly spread, fixed for the run
    recorded = []
    for index in range(5):
        recorded.append((search.step(index), search.ids.clone()))
    parts = search.parts

    def averaged_loss(prompt_ids):
        # One timestep at a time, independently of the batched evaluation the search uses.
        conditioning = parts.encode_ids(slot_token_ids(prompt_ids, **search.markers))
        losses = []
        for index in range(3):
            timesteps, noisy, target = search.noised(search.ranking.timesteps[index : index + 1], search.ranking.noise[index : index + 1])
            with torch.no_grad():
                losses.append(float(search.denoising_loss(conditioning, timesteps, noisy, target)))
        return sum(losses) / len(losses)

    for outcome, ids in recorded:
        assert outcome["loss"] == pytest.approx(averaged_loss(ids), rel=1e-4)
    shortlist = search.shortlist(3)
    assert [loss for _, loss in shortlist] == sorted(loss for _, loss in shortlist)
    assert [loss for _, loss in shortlist] == sorted(search.candidates.values())[:3]
    # The ranking does not depend on the random timestep each step drew: the same run again gives the
    # same shortlist, and a candidate's loss is the same whichever step produced it.
    again = inverter.start_search(reference, models, seed=4)
    for index in range(5):
        again.step(index)
    assert again.shortlist(3) == shortlist


def test_ph2p_refuses_two_encoder_pipelines(models, reference):
    pipeline = models.text_to_image.pipeline
    pipeline.text_encoder_2 = pipeline.text_encoder  # what an SDXL pipeline carries
    try:
        with pytest.raises(InvalidInputError, match="^PH2P does not support SDXL-family pipelines"):
            _ph2p("delayed").invert(reference, models, budget=InversionBudget(max_steps=1))
    finally:
        del pipeline.text_encoder_2


# ---- EDITOR ------------------------------------------------------------------------------------------


def test_editor_optimised_embedding_reconstructs_better_than_its_start(models, reference):
    editor = EditorInverter(denoising_steps=2, lr=0.05)
    embedding, losses = editor.optimise_embedding(reference, models, "a cat in the snow", seed=2, steps=6)
    assert embedding.shape == (1, 77, 32)
    assert losses[-1] < losses[0]
    assert all(later <= earlier + 1e-6 for earlier, later in zip(losses, losses[1:]))

    from arpo.tools.inversion.diffusion_parts import DiffusionParts
    from arpo.tools.inversion.editor import Reconstruction

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
