"""The offline stack mirrors the real one: each tiny preset runs its real family's pipeline, encoders
and scheduler class; --scheduler and --dtype reach the models; generation never steps a shared
scheduler."""

import copy
import json

import numpy as np
import pytest
import torch
from cli_harness import SAMPLE_IMAGE, run_arpo

from arpo.tools.model_stack import build_model_stack
from arpo.tools.schedulers import SCHEDULER_NAMES, fresh_scheduler, pipeline_view
from arpo.tools.text_to_image import TINY_PRESETS, TextToImage

# Pinned: the scheduler class of each real checkpoint (SD 1.5, SDXL base, PixArt-α 512).
PRESET_SCHEDULERS = {
    "tiny": "PNDMScheduler",
    "tiny-sdxl": "EulerDiscreteScheduler",
    "tiny-pixart": "DPMSolverMultistepScheduler",
}
PRESET_PIPELINES = {
    "tiny": "StableDiffusionPipeline",
    "tiny-sdxl": "StableDiffusionXLPipeline",
    "tiny-pixart": "PixArtAlphaPipeline",
}


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """One TextToImage per tiny preset, built once for this module."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ARPO_HOME", str(tmp_path_factory.mktemp("arpo-home")))
        return {preset: TextToImage.tiny(family=family) for preset, family in TINY_PRESETS.items()}


def pixels(image):
    return np.asarray(image, dtype=np.int16)


def test_presets_pin_their_real_scheduler_and_pipeline_classes(tiny_models):
    assert set(tiny_models) == set(PRESET_SCHEDULERS)
    for preset, t2i in tiny_models.items():
        assert type(t2i.pipeline.scheduler).__name__ == PRESET_SCHEDULERS[preset], preset
        assert type(t2i.pipeline).__name__ == PRESET_PIPELINES[preset], preset
        assert t2i.name == preset and t2i.describe()["scheduler_class"] == PRESET_SCHEDULERS[preset]


def test_sdxl_has_two_clip_encoders_with_pooled_projection_and_time_ids(tiny_models):
    pipeline = tiny_models["tiny-sdxl"].pipeline
    assert type(pipeline.text_encoder).__name__ == "CLIPTextModel"
    assert type(pipeline.text_encoder_2).__name__ == "CLIPTextModelWithProjection"
    assert pipeline.unet.config.addition_embed_type == "text_time"
    # The UNet cross-attends to both encoders side by side and embeds pooled text + 6 time ids.
    widths = pipeline.text_encoder.config.hidden_size + pipeline.text_encoder_2.config.hidden_size
    assert pipeline.unet.config.cross_attention_dim == widths
    time_ids = 6 * pipeline.unet.config.addition_time_embed_dim
    assert pipeline.unet.config.projection_class_embeddings_input_dim == time_ids + pipeline.text_encoder_2.config.projection_dim
    prompt_embeds, _, pooled, _ = pipeline.encode_prompt("a red fox", device="cpu", do_classifier_free_guidance=False)
    assert prompt_embeds.shape == (1, 77, widths) and pooled.shape == (1, pipeline.text_encoder_2.config.projection_dim)


def test_pixart_reads_a_120_token_t5_window_with_its_own_unigram_tokenizer(tiny_models):
    t2i = tiny_models["tiny-pixart"]
    tokenizer = t2i.pipeline.tokenizer
    assert type(t2i.pipeline.text_encoder).__name__ == "T5EncoderModel"
    assert type(tokenizer).__name__ == "T5Tokenizer"
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 2)
    ids = tokenizer("a portrait, oil painting").input_ids
    assert ids[-1] == tokenizer.eos_token_id and tokenizer.unk_token_id not in ids
    # T5's window is 120 positions, one of them the end marker.
    assert t2i.token_budget() == 119
    long_prompt = "blue sky, " * 60
    assert t2i.count_tokens(long_prompt) > 119
    seen = t2i.truncate(long_prompt)
    assert long_prompt.startswith(seen) and 110 <= t2i.count_tokens(seen) <= 119
    assert not seen.endswith(("blu", "bl", "b", "sk", "s"))  # cut between words, not inside one


def test_token_budget_is_75_for_the_clip_families(tiny_models):
    assert tiny_models["tiny"].token_budget() == 75
    assert tiny_models["tiny-sdxl"].token_budget() == 75


def test_trained_t5_tokenizer_is_cached_and_reused(tmp_path):
    from arpo.tools.t5_tokenizer import offline_t5_tokenizer

    first = offline_t5_tokenizer(cache_dir=tmp_path)
    cached = list(tmp_path.glob("unigram-*.json"))
    assert len(cached) == 1
    pieces = json.loads(cached[0].read_text(encoding="utf-8"))
    assert [piece for piece, _score in pieces[:3]] == ["<pad>", "</s>", "<unk>"]
    again = offline_t5_tokenizer(cache_dir=tmp_path)
    assert again.get_vocab() == first.get_vocab()


@pytest.mark.parametrize("preset", sorted(TINY_PRESETS))
def test_each_family_generates_reproducibly(tiny_models, preset):
    t2i = tiny_models[preset]
    first, again = t2i.generate("a red fox", seed=3), t2i.generate("a red fox", seed=3)
    assert first.size == (64, 64) and pixels(first).std() > 1.0
    assert np.array_equal(pixels(first), pixels(again))


# ---- one scheduler per generation -----------------------------------------------------------------


def scheduler_state(scheduler):
    """What a scheduler carries from one step to the next (PNDM's history, Euler's index, timesteps)."""
    state = {}
    for name in ("ets", "counter", "cur_model_output", "_step_index", "model_outputs", "lower_order_nums"):
        value = getattr(scheduler, name, None)
        state[name] = repr(value)
    state["timesteps"] = repr(getattr(scheduler, "timesteps", None))
    state["num_inference_steps"] = getattr(scheduler, "num_inference_steps", None)
    return state


@pytest.mark.parametrize("preset", sorted(TINY_PRESETS))
def test_generation_never_steps_the_shared_scheduler(tiny_models, preset):
    t2i = tiny_models[preset]
    shared = t2i.pipeline.scheduler
    before = scheduler_state(shared)
    t2i.generate("a red fox", seed=0)
    assert t2i.pipeline.scheduler is shared
    assert scheduler_state(shared) == before


def test_pndm_generation_is_unchanged_by_other_generations_and_by_stray_scheduler_state(tiny_models):
    t2i = tiny_models["tiny"]
    alone = pixels(t2i.generate("a red fox in the snow", seed=5))
    t2i.generate("a blue whale", seed=9)
    after_other = pixels(t2i.generate("a red fox in the snow", seed=5))
    # Someone else (an optimiser, another thread) leaves the shared PNDM half-way through a schedule.
    shared = t2i.pipeline.scheduler
    shared.set_timesteps(7)
    latents = torch.zeros(1, 4, 32, 32)
    for timestep in shared.timesteps[:3]:
        latents = shared.step(torch.randn_like(latents), timestep, latents).prev_sample
    after_stray = pixels(t2i.generate("a red fox in the snow", seed=5))
    assert np.array_equal(alone, after_other)
    assert np.array_equal(alone, after_stray)


def test_a_pipeline_view_shares_models_but_not_scheduler_or_config(tiny_models):
    pipeline = tiny_models["tiny"].pipeline
    view = pipeline_view(pipeline)
    assert view.unet is pipeline.unet and view.text_encoder is pipeline.text_encoder
    assert view.scheduler is not pipeline.scheduler and type(view.scheduler) is type(pipeline.scheduler)
    assert dict(view.scheduler.config) == dict(fresh_scheduler(pipeline).config)
    view.scheduler = fresh_scheduler(pipeline)
    assert pipeline.scheduler is not view.scheduler and pipeline.config is not view.config


def test_a_spare_scheduler_made_ahead_is_as_fresh_as_a_copy_made_on_the_spot(tiny_models):
    import time

    from arpo.tools import schedulers

    pipeline = tiny_models["tiny"].pipeline  # PNDM: counter and `ets` history between steps
    used = fresh_scheduler(pipeline)
    used.set_timesteps(7)
    latents = torch.zeros(1, 4, 32, 32)
    for timestep in used.timesteps[:3]:
        latents = used.step(torch.randn_like(latents), timestep, latents).prev_sample
    deadline = time.monotonic() + 5
    while pipeline.scheduler not in schedulers._SPARES and time.monotonic() < deadline:
        time.sleep(0.01)  # the loop is not busy here, so the spare is made at once
    assert pipeline.scheduler in schedulers._SPARES
    spare = fresh_scheduler(pipeline)
    on_the_spot = copy.deepcopy(schedulers._UNUSED_SCHEDULERS[pipeline.scheduler])
    assert spare is not used and spare is not pipeline.scheduler
    assert scheduler_state(spare) == scheduler_state(on_the_spot) != scheduler_state(used)


def test_a_render_after_the_spare_maker_shut_down_copies_for_itself(tiny_models, monkeypatch):
    from concurrent.futures import ThreadPoolExecutor

    from arpo.tools import schedulers

    stopped = ThreadPoolExecutor(max_workers=1)
    stopped.shutdown()  # as concurrent.futures' exit hook leaves it while other threads still render
    monkeypatch.setattr(schedulers, "_SPARE_MAKER", stopped)
    pipeline = tiny_models["tiny"].pipeline
    with schedulers._SPARES_LOCK:
        schedulers._SPARES.pop(pipeline.scheduler, None)
    fresh = fresh_scheduler(pipeline)
    assert fresh is not pipeline.scheduler
    assert scheduler_state(fresh) == scheduler_state(copy.deepcopy(schedulers._UNUSED_SCHEDULERS[pipeline.scheduler]))
    assert pipeline.scheduler not in schedulers._SPARES_COMING, "the next render asks again"


def test_interleaved_generations_from_threads_match_serial_ones(tiny_models):
    import threading

    t2i = tiny_models["tiny-pixart"]  # DPM-Solver++ keeps the previous model outputs between steps
    expected = {prompt: pixels(t2i.generate(prompt, seed=1)) for prompt in ("a red fox", "a blue whale")}
    results = {}

    def render(prompt):
        results[prompt] = pixels(t2i.generate(prompt, seed=1))

    threads = [threading.Thread(target=render, args=(prompt,)) for prompt in expected]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(np.array_equal(results[prompt], expected[prompt]) for prompt in expected)


# ---- --scheduler and --dtype -------------------------------------------------------------------------


@pytest.mark.parametrize("name", SCHEDULER_NAMES)
def test_every_scheduler_name_runs_the_loop(capsys, name):
    expected_class = {
        "ddim": "DDIMScheduler",
        "pndm": "PNDMScheduler",
        "euler": "EulerDiscreteScheduler",
        "euler-a": "EulerAncestralDiscreteScheduler",
        "dpm++": "DPMSolverMultistepScheduler",
    }[name]
    outcome = run_arpo(
        capsys, "invert", SAMPLE_IMAGE, "--models", "tiny", "--brain", "offline", "--steps", "1",
        "--scheduler", name, "--json",
    )
    assert outcome.exit_code == 0, outcome.stderr
    result = outcome.json()
    assert result["status"] == "finished" and len(result["iterations"]) == 2
    from arpo.storage.history import History

    run = History.open().get_run(result["run_id"])
    assert run.config["scheduler"] == name
    described = run.config["model_details"]["text_to_image"]
    assert (described["scheduler"], described["scheduler_class"]) == (name, expected_class)


def test_dpm_plus_plus_is_the_second_order_multistep_solver():
    t2i = build_model_stack("tiny", scheduler="dpm++").text_to_image
    config = t2i.pipeline.scheduler.config
    assert (config.algorithm_type, config.solver_order) == ("dpmsolver++", 2)
    # The checkpoint's noise schedule is kept when the scheduler class changes.
    assert (config.beta_start, config.beta_end, config.beta_schedule) == (0.00085, 0.012, "scaled_linear")


@pytest.mark.parametrize("preset", ["tiny-sdxl", "tiny-pixart"])
def test_each_family_runs_the_loop_from_the_command_line(capsys, preset):
    outcome = run_arpo(
        capsys, "invert", SAMPLE_IMAGE, "--models", preset, "--brain", "offline", "--steps", "1", "--json"
    )
    assert outcome.exit_code == 0, outcome.stderr
    result = outcome.json()
    assert result["status"] == "finished" and result["prompt"]
    assert [it["index"] for it in result["iterations"]] == [0, 1]


def test_bfloat16_generation_on_the_cpu():
    stack = build_model_stack("tiny", dtype="bfloat16")
    t2i = stack.text_to_image
    assert t2i.pipeline.unet.dtype == torch.bfloat16 and t2i.pipeline.vae.dtype == torch.bfloat16
    assert t2i.describe()["dtype"] == "bfloat16"
    assert stack.clip.describe()["dtype"] == "bfloat16" and stack.captioner.describe()["dtype"] == "bfloat16"
    image = t2i.generate("a red fox", seed=0)
    assert image.size == (64, 64) and np.isfinite(pixels(image)).all() and pixels(image).std() > 1.0
    full = TextToImage.tiny().generate("a red fox", seed=0)
    # Same weights rounded to bf16: the image is close to, but not bit-identical with, float32's.
    difference = np.abs(pixels(image) - pixels(full)).mean()
    assert 0 < difference < 40
    embedding = stack.clip.encode_images([image])
    assert embedding.dtype == torch.float32 and torch.isfinite(embedding).all()


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["--scheduler", "heun"], "scheduler"),
        (["--dtype", "float8"], "--dtype"),
    ],
)
def test_bad_scheduler_or_dtype_exits_2_with_one_line(capsys, args, problem):
    outcome = run_arpo(capsys, "invert", SAMPLE_IMAGE, "--models", "tiny", "--brain", "offline", *args)
    assert outcome.exit_code == 2
    assert problem in outcome.stderr and len(outcome.stderr.strip().splitlines()) == 1


def test_float16_keeps_what_real_loading_keeps_in_float32():
    pipeline = TextToImage.tiny(family="pixart", dtype=torch.float16).pipeline
    feed_forward = pipeline.text_encoder.encoder.block[0].layer[1].DenseReluDense
    # transformers keeps T5's `wo` in float32 when real weights load in float16 (it overflows otherwise).
    assert feed_forward.wo.weight.dtype == torch.float32 and feed_forward.wi.weight.dtype == torch.float16
    assert pipeline.transformer.dtype == torch.float16


@pytest.mark.parametrize("preset", ["tiny-sdxl", "tiny-pixart"])
def test_saved_family_loads_through_the_real_path_with_scheduler_and_dtype(tiny_models, tmp_path, preset):
    t2i = tiny_models[preset]
    t2i.pipeline.save_pretrained(tmp_path / preset)
    loaded = TextToImage.from_pretrained(str(tmp_path / preset), device="cpu", steps=t2i.steps)
    assert type(loaded.pipeline) is type(t2i.pipeline) and loaded.token_budget() == t2i.token_budget()
    assert np.array_equal(pixels(loaded.generate("a red fox", seed=2)), pixels(t2i.generate("a red fox", seed=2)))
    swapped = TextToImage.from_pretrained(
        str(tmp_path / preset), device="cpu", steps=t2i.steps, scheduler="euler-a", dtype=torch.bfloat16
    )
    assert type(swapped.pipeline.scheduler).__name__ == "EulerAncestralDiscreteScheduler"
    assert swapped.describe()["dtype"] == "bfloat16" and swapped.generate("a red fox", seed=2).size == (64, 64)


@pytest.mark.parametrize("family", ["sdxl", "pixart"])
def test_pndm_from_another_familys_config_skips_its_runge_kutta_warm_up(tmp_path, monkeypatch, family):
    # From an Euler or DPM-Solver config PNDM used to start with Runge-Kutta steps, which need at
    # least four denoising steps: the tiny presets' two crashed ("operands could not be broadcast").
    monkeypatch.setenv("ARPO_HOME", str(tmp_path))
    t2i = TextToImage.tiny(family=family, scheduler="pndm")
    assert t2i.pipeline.scheduler.config.skip_prk_steps
    assert t2i.generate("a red fox in the snow", seed=3).size == (t2i.width, t2i.height)
