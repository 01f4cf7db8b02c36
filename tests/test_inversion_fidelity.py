"""PH2P and EDITOR as users run them: every scheduler, bfloat16 models, non-finite gradients, families.

The stateful samplers (PNDM, DPM-Solver, Euler) must never carry one generation's history into the
next; half-precision models must still give float32, finite, non-zero gradients that move the
variables; a poisoned gradient is skipped, never applied; SDXL and PixArt are refused in one line.
"""

import logging
import math
from contextlib import contextmanager

import pytest
import torch
from PIL import Image

from arpo import SAMPLE_IMAGE
from arpo.core.errors import InvalidInputError
from arpo.tools.inversion.base import InversionBudget
from arpo.tools.inversion.diffusion_parts import DiffusionParts
from arpo.tools.inversion.editor import EditorInverter, Reconstruction
from arpo.tools.inversion.ph2p import Ph2pInverter
from arpo.tools.inversion.precision import SKIPPED_NON_FINITE, GradientGuard
from arpo.tools.inversion.training_free_inverter import TrainingFreeInverter
from arpo.tools.model_stack import build_model_stack
from arpo.tools.schedulers import SCHEDULER_NAMES, replace_scheduler

PHRASES = ["a cat", "a dog", "oil painting", "in the snow"]


@pytest.fixture(scope="module")
def models():
    return build_model_stack("tiny")


@pytest.fixture(scope="module")
def bf16_models():
    return build_model_stack("tiny", dtype="bfloat16")


@pytest.fixture(scope="module")
def reference():
    return Image.open(SAMPLE_IMAGE).convert("RGB")


@contextmanager
def scheduler(models, name):
    """The stack's pipeline samples with `name` for the duration (PNDM as SD 1.5 configures it); None
    keeps the preset's own."""
    pipeline = models.text_to_image.pipeline
    original = pipeline.scheduler
    if name is not None:
        replace_scheduler(pipeline, name)
    if name == "pndm":  # SD 1.5's PNDM skips the Runge-Kutta warm-up, which needs 4+ steps
        pipeline.scheduler = type(pipeline.scheduler).from_config(pipeline.scheduler.config, skip_prk_steps=True)
    try:
        yield pipeline.scheduler
    finally:
        pipeline.scheduler = original


@contextmanager
def poisoned_gradients(unet, calls):
    """The gradient flowing back out of the UNet's first `calls` forward passes becomes NaN (the
    losses themselves stay finite), as an overflow in a half-precision backward pass would."""
    seen = []

    def hook(_module, _args, output):
        seen.append(1)
        if len(seen) <= calls and output.sample.requires_grad:
            output.sample.register_hook(lambda gradient: torch.full_like(gradient, float("nan")))
        return output

    handle = unet.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def _ph2p(**kwargs):
    return Ph2pInverter(prompt_len=4, lbfgs_iterations=3, rescored=1, ranking_timesteps=2, **kwargs)


# ---- every scheduler ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SCHEDULER_NAMES)
def test_editor_generation_is_a_function_of_the_embedding_under_every_scheduler(models, reference, name):
    with scheduler(models, name):
        parts = DiffusionParts(models.text_to_image, "EDITOR")
        reconstruction = Reconstruction(parts, reference, 0, 3, "latent")
        embedding = parts.encode_prompts(["a cat"]).requires_grad_(True)
        # Two optimisation steps in a row: a sampler stepped across them would crash the second backward
        # pass (PNDM) or give the second generation a different result.
        first = reconstruction.loss(embedding)
        first.backward()
        second = reconstruction.loss(embedding)
        second.backward()
        assert float(second) == float(first)
        assert torch.isfinite(embedding.grad).all() and embedding.grad.abs().sum() > 0
        assert type(models.text_to_image.pipeline.scheduler).__name__ == type(parts.fresh_scheduler()).__name__


@pytest.mark.parametrize("name", SCHEDULER_NAMES)
def test_editor_and_ph2p_run_end_to_end_under_every_scheduler(models, reference, name):
    budget = InversionBudget(max_steps=2)
    with scheduler(models, name):
        editor = EditorInverter(
            denoising_steps=2, initial_prompt="a dog", text_recovery=TrainingFreeInverter(phrases=PHRASES, rounds=1)
        ).invert(reference, models, seed=0, budget=budget)
        ph2p = _ph2p().invert(reference, models, seed=0, budget=budget)
    reconstruction = [step for step in editor.steps if step.details["phase"] == "reconstruction"]
    assert len(reconstruction) == 2 and all(step.loss is not None for step in reconstruction)
    assert editor.details["skipped_steps"] == 0 and editor.prompt
    assert len(ph2p.steps) == 2 and ph2p.prompt and ph2p.details["skipped_steps"] == 0


def test_editor_takes_several_steps_with_pndm_and_lowers_its_loss(models, reference):
    with scheduler(models, "pndm"):
        _embedding, losses = EditorInverter(denoising_steps=4, lr=0.05).optimise_embedding(
            reference, models, "a cat in the snow", seed=1, steps=4
        )
    assert len(losses) == 4 and losses[-1] < losses[0]


@pytest.mark.parametrize(
    ("method", "flags"), [("editor", ("--scheduler", "pndm")), ("ph2p", ("--scheduler", "dpm++", "--dtype", "bfloat16"))]
)
def test_methods_from_the_cli_take_several_steps_with_stateful_schedulers(capsys, arpo_home, method, flags):
    from cli_harness import SAMPLE_IMAGE as IMAGE
    from cli_harness import run_arpo

    from arpo.storage.history import History

    outcome = run_arpo(
        capsys, "invert", IMAGE, "--models", "tiny", *flags, "--method", method, "--inversion-steps", "3", "--json"
    )
    assert outcome.exit_code == 0, outcome.stderr
    result = outcome.json()
    assert result["status"] == "finished"
    history = History.open()
    config = history.get_run(result["run_id"]).config
    assert [config["scheduler"], config.get("dtype")] == [flags[1], flags[3] if len(flags) > 2 else None]
    steps = history.inversion_steps(result["run_id"], method=method)
    assert [s.step for s in steps][:3] == [0, 1, 2] and all(s.loss is not None for s in steps[:3])
    assert not any("skipped" in s.details for s in steps)


# ---- half precision ------------------------------------------------------------------------------------


def test_editor_in_bfloat16_gets_finite_float32_gradients_that_move_the_embedding(bf16_models, reference):
    parts = DiffusionParts(bf16_models.text_to_image, "EDITOR")
    assert parts.dtype == torch.bfloat16
    reconstruction = Reconstruction(parts, reference, 0, 2, "latent")
    start = parts.encode_prompts(["a cat"])
    embedding = start.clone().requires_grad_(True)
    loss = reconstruction.loss(embedding)
    loss.backward()
    assert loss.dtype == torch.float32 and embedding.grad.dtype == torch.float32
    assert torch.isfinite(embedding.grad).all() and embedding.grad.abs().sum() > 0

    unet = bf16_models.text_to_image.pipeline.unet
    result = EditorInverter(
        denoising_steps=2, lr=0.05, initial_prompt="a cat", text_recovery=TrainingFreeInverter(phrases=PHRASES, rounds=1)
    ).invert(reference, bf16_models, seed=0, budget=InversionBudget(max_steps=3))
    assert result.details["model_dtype"] == "bfloat16" and result.details["skipped_steps"] == 0
    assert result.details["gradient_checkpointing"] is True and not unet.is_gradient_checkpointing  # restored
    assert result.details["caption_distance"] > 0  # the optimised embedding moved away from the caption's
    assert result.details["best_reconstruction_loss"] < result.details["initial_reconstruction_loss"]


def test_ph2p_in_bfloat16_gets_finite_float32_gradients_that_move_the_slots(bf16_models, reference):
    search = _ph2p().start_search(reference, bf16_models, seed=2)
    assert search.soft.dtype == torch.float32 and search.parts.dtype == torch.bfloat16
    timestep, noisy, target = search._draw_noise()
    loss = search._loss(search.soft, search.ids, timestep, noisy, target)
    loss.backward()
    assert loss.dtype == torch.float32 and search.soft.grad.dtype == torch.float32
    assert torch.isfinite(search.soft.grad).all() and search.soft.grad.abs().sum() > 0
    search.soft.grad = None

    outcomes = [search.step(index) for index in range(3)]
    assert all("skipped" not in outcome for outcome in outcomes)
    assert all(outcome["moved"] > 0 for outcome in outcomes)
    assert any(outcome["tokens_changed"] > 0 for outcome in outcomes)
    assert search.soft.dtype == torch.float32
    assert torch.equal(search.soft, search.parts.token_embedding.weight[search.ids].float())


def test_editor_skips_a_step_whose_gradient_is_not_finite(bf16_models, reference, caplog):
    denoising_steps = 2
    with caplog.at_level(logging.WARNING), poisoned_gradients(bf16_models.text_to_image.pipeline.unet, denoising_steps):
        tracker_steps = []
        result = EditorInverter(
            denoising_steps=denoising_steps, lr=0.05, initial_prompt="a cat",
            text_recovery=TrainingFreeInverter(phrases=PHRASES, rounds=1),
        ).invert(reference, bf16_models, seed=0, budget=InversionBudget(max_steps=3), on_step=tracker_steps.append)
    losses = [step.loss for step in result.steps if step.details["phase"] == "reconstruction"]
    assert result.steps[0].details["skipped"] == SKIPPED_NON_FINITE and "skipped" not in result.steps[1].details
    assert losses[1] == losses[0]  # nothing was applied: the same embedding, the same loss
    assert losses[2] != losses[1]  # the next, clean step was
    assert result.details["skipped_steps"] == 1
    assert any("non-finite gradient" in record.getMessage() for record in caplog.records)


@pytest.mark.parametrize("projection", ["delayed", "immediate"])
def test_ph2p_skips_a_step_whose_gradient_is_not_finite(bf16_models, reference, caplog, projection):
    search = _ph2p(projection=projection).start_search(reference, bf16_models, seed=2)
    start_ids, start_vectors = search.ids.clone(), search.soft.detach().clone()
    with caplog.at_level(logging.WARNING), poisoned_gradients(search.parts.unet, 1):
        skipped = search.step(0)
        ids_after_skip, vectors_after_skip = search.ids.clone(), search.soft.detach().clone()
        applied = search.step(1)
    assert skipped["skipped"] == SKIPPED_NON_FINITE and "skipped" not in applied
    assert search.guard.skipped == 1
    assert any("non-finite gradient" in record.getMessage() for record in caplog.records)
    # The skipped step left the tokens and vectors where they were; the applied one moved the vectors.
    assert torch.equal(ids_after_skip, start_ids) and torch.equal(vectors_after_skip, start_vectors)
    assert torch.isfinite(search.soft).all() and not torch.equal(search.soft.detach(), start_vectors)


def test_float16_loss_scaling_keeps_small_gradients_that_plain_backward_loses():
    torch.manual_seed(0)
    layer = torch.nn.Linear(8, 8).to(torch.float16).requires_grad_(False)
    variable = torch.randn(2, 8)  # float32 master copy

    def loss_of(vectors):  # a small loss, as late in an optimisation: its gradient underflows float16
        return layer(vectors.to(torch.float16)).float().pow(2).mean() * 1e-9

    plain = variable.clone().requires_grad_(True)
    loss_of(plain).backward()
    assert plain.grad.abs().max() == 0  # flushed to zero on the way back through the float16 layer

    guard = GradientGuard(torch.float16, "test")
    scaled = variable.clone().requires_grad_(True)
    assert guard.backward(loss_of(scaled), [scaled])
    exact = variable.clone().requires_grad_(True)
    (layer.float()(exact).pow(2).mean() * 1e-9).backward()
    layer.to(torch.float16)
    assert scaled.grad.abs().max() > 0 and torch.allclose(scaled.grad, exact.grad, rtol=0.05, atol=1e-12)

    scale = guard.scale
    assert scale > 1 and guard.skip(0)["loss_scale"] == scale / 2  # backs off after an overflow
    assert GradientGuard(torch.bfloat16, "test").scale == 1.0  # bfloat16 has float32's range
    assert not GradientGuard(torch.float32, "test").unscale_([torch.tensor([float("inf")])])


def test_ph2p_and_editor_in_float16_step_with_loss_scaling(reference):
    models = build_model_stack("tiny", dtype="float16")
    search = _ph2p().start_search(reference, models, seed=2)
    outcomes = [search.step(index) for index in range(2)]
    assert search.guard.scaling and search.guard.skipped == 0
    assert all(outcome["moved"] > 0 and math.isfinite(outcome["loss"]) for outcome in outcomes)
    assert search.soft.dtype == torch.float32

    embedding, losses = EditorInverter(denoising_steps=2, lr=0.05).optimise_embedding(
        reference, models, "a cat", seed=1, steps=3
    )
    assert embedding.dtype == torch.float32 and all(math.isfinite(loss) for loss in losses)
    assert losses[-1] < losses[0]


# ---- model families ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("preset", "method", "label"), [
    ("tiny-sdxl", "PH2P", "SDXL-family"), ("tiny-pixart", "PH2P", "PixArt-family"), ("tiny-pixart", "EDITOR", "PixArt-family"),
])
def test_methods_refuse_families_outside_their_formulation_in_one_line(reference, preset, method, label):
    inverter = _ph2p() if method == "PH2P" else EditorInverter(initial_prompt="a cat")
    with pytest.raises(InvalidInputError) as refused:
        inverter.invert(reference, build_model_stack(preset), budget=InversionBudget(max_steps=1))
    message = str(refused.value)
    assert message.startswith(f"{method} does not support {label} pipelines") and "\n" not in message


@pytest.mark.parametrize(("preset", "name"), [("tiny", None), ("tiny", "dpm++"), ("tiny", "ddim"), ("tiny-sdxl", None)])
def test_editor_generation_reproduces_the_pipelines_own_latents(reference, preset, name):
    stack = build_model_stack(preset)
    text_to_image = stack.text_to_image
    with scheduler(stack, name):
        parts = DiffusionParts(text_to_image, "EDITOR", sdxl=True)
        reconstruction = Reconstruction(parts, reference, 3, text_to_image.steps, "latent", "a red barn")
        with torch.no_grad():
            ours = reconstruction.generate_latents(parts.encode_prompts(["a red barn"]))
            theirs = text_to_image.pipeline(
                prompt="a red barn", num_inference_steps=text_to_image.steps, guidance_scale=text_to_image.guidance_scale,
                height=text_to_image.height, width=text_to_image.width,
                generator=torch.Generator("cpu").manual_seed(3), output_type="latent",
            ).images
    # Same noise, sampler, guidance and (on SDXL) pooled embeddings and size ids as the pipeline itself.
    assert torch.allclose(ours, theirs.float(), atol=1e-5)


def test_editor_runs_on_sdxl_with_both_encoders(reference):
    stack = build_model_stack("tiny-sdxl")
    parts = DiffusionParts(stack.text_to_image, "EDITOR", sdxl=True)
    ours = parts.encode_prompts(["a red barn"])
    theirs, _negative, pooled, _negative_pooled = stack.text_to_image.pipeline.encode_prompt(
        ["a red barn"], device="cpu", do_classifier_free_guidance=True
    )
    assert ours.shape[-1] == parts.embedding_width == 64 and torch.allclose(ours, theirs.float(), atol=1e-5)
    assert torch.allclose(parts.pooled_prompts(["a red barn"]), pooled.float(), atol=1e-5)

    result = EditorInverter(
        denoising_steps=2, lr=0.05, initial_prompt="a dog", text_recovery=TrainingFreeInverter(phrases=PHRASES, rounds=1)
    ).invert(reference, stack, seed=0, budget=InversionBudget(max_steps=3))
    assert result.prompt and result.details["skipped_steps"] == 0
    assert result.details["best_reconstruction_loss"] < result.details["initial_reconstruction_loss"]


def test_pez_skips_a_step_whose_gradient_is_not_finite(models, reference):
    from arpo.tools.inversion.pez import PezInverter

    seen = []

    def poison_first(_module, _args, output):
        seen.append(1)
        if len(seen) == 1:
            output.register_hook(lambda gradient: torch.full_like(gradient, float("inf")))
        return output

    handle = models.clip.model.ln_final.register_forward_hook(poison_first)
    try:
        result = PezInverter(prompt_len=4).invert(reference, models, seed=3, budget=InversionBudget(max_steps=3))
    finally:
        handle.remove()
    first, second = result.steps[0], result.steps[1]
    assert first.details["skipped"] == SKIPPED_NON_FINITE and "skipped" not in second.details
    # Nothing was applied: the second step starts from the same vectors, so the same tokens and score.
    assert second.prompt == first.prompt and second.loss == first.loss
