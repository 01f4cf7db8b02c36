"""Text-to-image wrapper: tiny pipeline, prompt budget, determinism, loading rules."""

import json
import threading
import time

import numpy as np
import pytest

from arpo.core.errors import ModelUnavailableError
from arpo.tools.text_to_image import TextToImage, _content_token_budget

# Four tokens per repetition ("a", "red", "fox", ","): 20 repetitions are far past the 75-token budget.
LONG_PROMPT = "a red fox, " * 20 + "in the snow, oil painting"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ARPO_HOME", str(tmp_path_factory.mktemp("arpo-home")))
        return TextToImage.tiny()


def pixels(image):
    return np.asarray(image, dtype=np.int16)


def test_tiny_generates_small_rgb_images_fast(tiny):
    tiny.generate("warm up", seed=0)
    started = time.perf_counter()
    image = tiny.generate("a red fox in the snow", seed=1)
    assert time.perf_counter() - started < 1.0
    assert image.mode == "RGB" and image.size == (64, 64)
    assert pixels(image).std() > 1.0  # not a blank image


def test_same_seed_same_image_other_seed_other_image(tiny):
    first = tiny.generate("a red fox", seed=7)
    again = tiny.generate("a red fox", seed=7)
    other = tiny.generate("a red fox", seed=8)
    assert np.array_equal(pixels(first), pixels(again))
    assert np.abs(pixels(first) - pixels(other)).mean() > 1.0


def test_tiny_weights_are_fixed_by_their_seed(tiny):
    rebuilt = TextToImage.tiny(seed=0)
    different = TextToImage.tiny(seed=1)
    reference = pixels(tiny.generate("a red fox", seed=3))
    assert np.array_equal(reference, pixels(rebuilt.generate("a red fox", seed=3)))
    assert not np.array_equal(reference, pixels(different.generate("a red fox", seed=3)))


def test_counters_track_calls_and_time(tiny):
    calls, seconds = tiny.calls, tiny.forward_seconds
    tiny.generate("a red fox", seed=1)
    tiny.generate("a red fox", seed=2)
    assert tiny.calls == calls + 2
    assert tiny.forward_seconds > seconds


def test_concurrent_generation_gives_the_serial_results(tiny):
    expected = {seed: pixels(tiny.generate("a red fox", seed=seed)) for seed in range(4)}
    produced = {}

    def worker(seed):
        produced[seed] = pixels(tiny.generate("a red fox", seed=seed))

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(np.array_equal(produced[seed], expected[seed]) for seed in range(4))


def test_clip_budget_and_token_counts(tiny):
    assert tiny.token_budget() == 75
    assert tiny.count_tokens("a red fox") == 3
    assert tiny.count_tokens("a red fox, in the snow") == 7
    assert tiny.count_tokens(LONG_PROMPT) == 4 * 20 + 6


def test_truncate_keeps_exactly_the_budget_as_a_prefix(tiny):
    truncated = tiny.truncate(LONG_PROMPT)
    assert LONG_PROMPT.startswith(truncated)
    assert tiny.count_tokens(truncated) == 75
    assert truncated.endswith("a red fox, a red fox, a red fox")  # 18 full repeats + "a red fox"


def test_truncate_leaves_fitting_prompts_alone(tiny):
    prompt = "A Red Fox,  in the SNOW; oil painting"
    assert tiny.truncate(prompt) == prompt


def test_truncate_keeps_non_ascii_text_intact(tiny):
    prompt = "café déjà vu, " * 30
    truncated = tiny.truncate(prompt)
    assert prompt.startswith(truncated)
    assert tiny.count_tokens(truncated) <= 75
    assert tiny.count_tokens(truncated) >= 73


def test_describe_is_json_and_names_the_recipe(tiny):
    description = tiny.describe()
    json.dumps(description)
    assert description["pipeline"] == "StableDiffusionPipeline"
    assert description["scheduler"] == "pndm" and description["scheduler_class"] == "PNDMScheduler"
    assert (description["steps"], description["height"], description["width"]) == (2, 64, 64)
    assert description["token_budget"] == 75 and description["dtype"] == "float32"
    assert description["diffusers_version"] and description["torch_version"]


def test_local_folder_loads_through_the_real_path(tiny, tmp_path):
    tiny.pipeline.save_pretrained(tmp_path / "pipeline")
    loaded = TextToImage.from_pretrained(str(tmp_path / "pipeline"), steps=tiny.steps, device="cpu")
    assert loaded.pipeline.safety_checker is None
    assert (loaded.height, loaded.width) == (64, 64)
    assert np.array_equal(pixels(loaded.generate("a red fox", 5)), pixels(tiny.generate("a red fox", 5)))


def test_preset_without_cached_weights_fails_fast_offline():
    started = time.perf_counter()
    with pytest.raises(ModelUnavailableError, match="stable-diffusion-v1-5.*--models tiny"):
        TextToImage.from_pretrained("sd15")
    with pytest.raises(ModelUnavailableError, match="PixArt"):
        TextToImage.from_pretrained("pixart")
    assert time.perf_counter() - started < 10.0


class _T5Tokenizer:
    """Shape of a T5 tokenizer as far as the budget rule cares: huge limit, one end marker."""

    model_max_length = 512

    def num_special_tokens_to_add(self, pair=False):
        return 1


class _PixArtLikePipeline:
    tokenizer = _T5Tokenizer()

    def __call__(self, prompt, max_sequence_length: int = 120):
        raise NotImplementedError


class _FluxLikePipeline(_PixArtLikePipeline):
    tokenizer_2 = _T5Tokenizer()

    def __call__(self, prompt, max_sequence_length: int = 512):
        raise NotImplementedError


def test_budget_for_t5_only_pipelines_follows_max_sequence_length():
    assert _content_token_budget(_PixArtLikePipeline(), _T5Tokenizer()) == 119


def test_max_sequence_length_of_a_second_encoder_does_not_cut_the_first():
    first = _T5Tokenizer()
    first.model_max_length = 77
    assert _content_token_budget(_FluxLikePipeline(), first) == 76


def _uncached_render(family: str, t2i: TextToImage, prompt: str, seed: int):
    """What the family's pipeline renders when called directly, with no encodings remembered."""
    import torch

    from arpo.tools.text_to_image import _fixed_call_options
    from arpo.tools.tiny_pipelines import tiny_pipeline

    pipeline = tiny_pipeline(family, 0)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline(
        prompt=prompt, num_inference_steps=t2i.steps, guidance_scale=t2i.guidance_scale, height=t2i.height,
        width=t2i.width, generator=torch.Generator().manual_seed(seed), output_type="pil", **_fixed_call_options(pipeline),
    ).images[0]


@pytest.mark.parametrize("family", ["sd15", "sdxl", "pixart"])
def test_a_prompt_and_the_negative_prompt_are_encoded_once_and_images_do_not_change(family):
    t2i = TextToImage.tiny(family=family)
    first = t2i.generate("a red cat", 0)
    again = t2i.generate("a red cat", 0)
    other = t2i.generate("a blue dog", 1)
    memory = t2i.remembered_encodings[0]
    # SD 1.5 and PixArt (T5, called with its attention mask) encode the prompt and the empty negative
    # every render; SDXL guides with zeros for an empty negative.
    if family in ("sd15", "pixart"):
        assert (memory.hits, memory.misses) == (3, 3)
    else:
        assert (memory.hits, memory.misses) == (1, 2) and len(t2i.remembered_encodings) == 2
    assert np.array_equal(pixels(first), pixels(again))
    assert np.array_equal(pixels(other), pixels(_uncached_render(family, t2i, "a blue dog", 1)))


def test_an_encoding_is_computed_outside_a_render_with_gradients_or_under_an_embedding_hook(tiny):
    import torch

    from arpo.tools.text_encoder_cache import encodings_remembered

    encoder = tiny.pipeline.text_encoder
    ids = tiny.pipeline.tokenizer(["a red cat"], padding="max_length", return_tensors="pt").input_ids
    memory = tiny.remembered_encodings[0]
    with torch.no_grad(), encodings_remembered():
        plain = encoder(ids)[0]
        assert encoder(ids)[0] is plain  # answered from memory
    hits = memory.hits
    with torch.no_grad():
        assert encoder(ids)[0] is not plain  # outside a render (an inverter's own call)
    with torch.enable_grad(), encodings_remembered():
        assert encoder(ids)[0].requires_grad
    # PH2P's way: the lookup's rows swapped by a hook, the ids unchanged; the output must follow the hook.
    handle = encoder.get_input_embeddings().register_forward_hook(lambda _module, _inputs, rows: rows * 0)
    try:
        with torch.no_grad(), encodings_remembered():
            assert not torch.allclose(encoder(ids)[0], plain)
    finally:
        handle.remove()
    assert memory.hits == hits


def test_channels_last_keeps_the_images_and_is_recorded():
    import torch

    from arpo.tools.text_to_image import Speedups

    plain = TextToImage.tiny()
    faster = TextToImage.tiny().speed_up(Speedups(channels_last=True))
    weight = next(p for p in faster.denoiser.parameters() if p.dim() == 4)
    assert weight.is_contiguous(memory_format=torch.channels_last)
    assert np.abs(pixels(plain.generate("a red cat", 3)) - pixels(faster.generate("a red cat", 3))).max() <= 1
    assert faster.describe()["channels_last"] is True and plain.describe()["channels_last"] is False


def test_channels_last_in_bfloat16_renders_nearly_the_same_image():
    """Half precision is where users turn it on; bf16 stands in for fp16 on the CPU."""
    import torch

    from arpo.tools.text_to_image import Speedups

    plain = TextToImage.tiny(dtype=torch.bfloat16)
    faster = TextToImage.tiny(dtype=torch.bfloat16).speed_up(Speedups(channels_last=True))
    weight = next(p for p in faster.denoiser.parameters() if p.dim() == 4)
    assert weight.dtype == torch.bfloat16 and weight.is_contiguous(memory_format=torch.channels_last)
    difference = np.abs(pixels(plain.generate("a red cat", 3)) - pixels(faster.generate("a red cat", 3)))
    assert difference.mean() < 2 and difference.max() <= 16  # bf16 rounding, not another image


def test_compile_compiles_the_denoiser_in_place_once(monkeypatch):
    from arpo.tools.text_to_image import Speedups

    t2i = TextToImage.tiny()
    denoiser = t2i.denoiser
    compiled: list[object] = []
    monkeypatch.setattr(denoiser, "compile", lambda *args, **kwargs: compiled.append(denoiser))
    t2i.speed_up(Speedups(compile=True)).speed_up(Speedups(compile=True, channels_last=True))
    assert compiled == [denoiser] and t2i.denoiser is denoiser
    assert t2i.describe()["compile"] is True and t2i.describe()["channels_last"] is True


@pytest.mark.slow
def test_a_compiled_denoiser_renders_the_same_images():
    """torch.compile for real (inductor compiles C++ here: about a minute on two cores)."""
    from arpo.tools.text_to_image import Speedups

    plain = TextToImage.tiny()
    compiled = TextToImage.tiny().speed_up(Speedups(compile=True))
    assert np.abs(pixels(plain.generate("a red cat", 3)) - pixels(compiled.generate("a red cat", 3))).max() <= 1


def test_the_speedup_flags_reach_the_run_configuration(arpo_home, capsys):
    from cli_harness import SAMPLE_IMAGE, run_arpo

    from arpo.storage.history import History

    outcome = run_arpo(capsys, "invert", SAMPLE_IMAGE, "--models", "tiny", "--brain", "offline", "--steps", "0",
                       "--channels-last", "--json")
    assert outcome.exit_code == 0, outcome.stderr
    with History.open() as history:
        config = history.get_run(history.list_runs()[0].id).config
    assert config["channels_last"] is True and config["compile"] is False
    assert config["model_details"]["text_to_image"]["channels_last"] is True
