"""Captioner: tiny BLIP-2 (the real default's classes) and tiny BLIP captions, thread safety,
fallback, leaving the accelerator between captions, half precision, loading rules."""

import json
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import (
    Blip2ForConditionalGeneration,
    Blip2Processor,
    BlipForConditionalGeneration,
    BlipImageProcessor,
    GPT2Tokenizer,
    OPTForCausalLM,
)

from arpo.core.errors import InvalidInputError, ModelUnavailableError
from arpo.tools.captioner import (
    DEFAULT_CAPTIONER,
    FALLBACK_CAPTION,
    Captioner,
    _captioning_class,
    _tiny_words,
    tiny_opt_tokenizer,
)


@pytest.fixture(scope="module")
def captioner():
    return Captioner.tiny()


def noise_image(seed: int, mode="RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((40, 56, 3)) * 255).astype("uint8")).convert(mode)


def test_tiny_captioner_has_the_real_defaults_classes(captioner):
    assert "blip2" in DEFAULT_CAPTIONER
    assert isinstance(captioner.model, Blip2ForConditionalGeneration)
    assert isinstance(captioner.model.language_model, OPTForCausalLM) or (
        captioner.model.config.text_config.model_type == "opt"
    )
    assert isinstance(captioner.processor, Blip2Processor)
    assert isinstance(captioner.processor.image_processor, BlipImageProcessor)
    assert isinstance(captioner.processor.tokenizer, GPT2Tokenizer)
    config = captioner.model.config
    assert config.num_query_tokens == captioner.processor.num_query_tokens
    assert config.image_token_index == captioner.processor.tokenizer.convert_tokens_to_ids("<image>")


def test_tiny_opt_tokenizer_is_byte_level_bpe_laid_out_like_opt():
    tokenizer = tiny_opt_tokenizer()
    assert [tokenizer.convert_ids_to_tokens(index) for index in range(4)] == ["<s>", "<pad>", "</s>", "<unk>"]
    ids = tokenizer("oil painting, cubism")["input_ids"]
    assert ids[0] == tokenizer.bos_token_id == 2  # OPT opens every text with "</s>"
    assert "Ġpainting" in tokenizer.convert_ids_to_tokens(ids)  # byte-level: a space is part of the word
    assert tokenizer.decode(ids, skip_special_tokens=True) == "oil painting, cubism"
    # Any text round-trips, even characters no phrase contains: every byte is in the vocabulary.
    assert tokenizer.decode(tokenizer("Café № 5")["input_ids"], skip_special_tokens=True) == "Café № 5"


def test_tiny_tokenizer_files_are_cached_and_rebuilt_identically(arpo_home):
    first = tiny_opt_tokenizer().get_vocab()
    cached = list((arpo_home / "cache" / "opt-tokenizer").glob("*/merges.txt"))
    assert len(cached) == 1
    merges = cached[0].read_text()
    cached[0].parent.joinpath("vocab.json").unlink()
    assert tiny_opt_tokenizer().get_vocab() == first
    assert cached[0].read_text() == merges


def test_tiny_caption_is_words_from_the_phrase_banks(captioner):
    caption = captioner.caption(noise_image(1))
    words = caption.split()
    assert 1 <= len(words) <= captioner.max_new_tokens
    assert set(words) <= _tiny_words()  # no raw bytes, word pieces or special tokens


def test_captions_are_repeatable_and_depend_on_the_weights(captioner):
    image = noise_image(2)
    assert captioner.caption(image) == captioner.caption(image)
    assert Captioner.tiny(seed=0).caption(image) == captioner.caption(image)
    assert Captioner.tiny(seed=5).caption(image) != captioner.caption(image)


def test_odd_image_modes_are_accepted(captioner):
    for mode in ("L", "RGBA", "P", "CMYK"):
        assert captioner.caption(noise_image(3, mode=mode))


def test_concurrent_captions_match_serial_ones(captioner):
    images = [noise_image(seed) for seed in range(4)]
    expected = [captioner.caption(image) for image in images]
    produced = [None] * 4
    fresh = Captioner.tiny()  # the same weights with nothing remembered, so every thread generates

    def worker(index):
        produced[index] = fresh.caption(images[index])

    threads = [threading.Thread(target=worker, args=(index,)) for index in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert produced == expected


def test_empty_decoding_falls_back_to_a_neutral_caption(captioner, monkeypatch):
    monkeypatch.setattr(captioner.processor, "batch_decode", lambda *args, **kwargs: ["  "])
    # An image no other test captions: the captioner remembers captions by content.
    assert captioner.caption(noise_image(11)) == FALLBACK_CAPTION == "an image"


def test_counters_and_description(captioner):
    calls = captioner.calls
    captioner.caption(noise_image(12))
    assert captioner.calls == calls + 1 and captioner.forward_seconds > 0
    description = captioner.describe()
    json.dumps(description)
    assert description["architecture"] == "Blip2ForConditionalGeneration"
    assert description["model"] == "tiny"
    assert description["device"] == "cpu" and description["rests_on_cpu"] is False


def test_tiny_blip_is_still_available_by_name():
    blip = Captioner.from_pretrained("tiny-blip", device="cpu")
    assert isinstance(blip.model, BlipForConditionalGeneration)
    assert blip.describe()["model"] == "tiny-blip"
    assert blip.caption(noise_image(2))
    assert isinstance(Captioner.from_pretrained("tiny", device="cpu").model, Blip2ForConditionalGeneration)


class FakeAccelerator:
    """Stands in for a GPU on a CPU-only machine: records where the captioner sends its model, moving
    it for real only to the CPU, and notes where the model was said to be while it generated."""

    def __init__(self, model):
        self.moves, self.during_generation = [], []
        self.location = "cpu"
        real_to, real_generate = model.to, model.generate

        def to(*args, **kwargs):
            target = torch.device(args[0]) if args and not isinstance(args[0], torch.dtype) else None
            if target is not None:
                self.moves.append(str(target))
                self.location = str(target)
                return model if target.type != "cpu" else real_to(*args, **kwargs)
            return real_to(*args, **kwargs)

        def generate(*args, **kwargs):
            self.during_generation.append(self.location)
            return real_generate(*args, **kwargs)

        model.to, model.generate = to, generate


def test_captioner_leaves_the_accelerator_once_the_caption_is_made():
    model = Captioner.tiny(seed=3).model
    accelerator = FakeAccelerator(model)
    captioner = Captioner(model, Captioner.tiny(seed=3).processor, name="tiny", max_new_tokens=8, device="cuda")
    assert captioner.offloads and accelerator.location == "cpu"  # rests on the CPU from the start
    assert captioner.describe()["device"] == "cuda"
    caption = captioner.caption(noise_image(4))
    assert caption == Captioner.tiny(seed=3).caption(noise_image(4))
    assert accelerator.during_generation == ["cuda"]
    assert accelerator.moves[-2:] == ["cuda", "cpu"] and accelerator.location == "cpu"
    assert all(parameter.device.type == "cpu" for parameter in model.parameters())


def test_captioner_goes_back_to_the_cpu_when_generation_fails(monkeypatch):
    model = Captioner.tiny(seed=3).model
    accelerator = FakeAccelerator(model)
    captioner = Captioner(model, Captioner.tiny(seed=3).processor, name="tiny", max_new_tokens=8, device="cuda")

    def out_of_memory(*args, **kwargs):
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(captioner.model, "generate", out_of_memory)
    with pytest.raises(RuntimeError, match="out of memory"):
        captioner.caption(noise_image(4))
    assert accelerator.moves[-2:] == ["cuda", "cpu"] and accelerator.location == "cpu"


def test_a_remembered_caption_moves_nothing():
    model = Captioner.tiny(seed=3).model
    accelerator = FakeAccelerator(model)
    captioner = Captioner(model, Captioner.tiny(seed=3).processor, name="tiny", max_new_tokens=8, device="cuda")
    captioner.caption(noise_image(4))
    moves = list(accelerator.moves)
    captioner.caption(noise_image(4))
    assert accelerator.moves == moves and captioner.reused_captions == 1


def test_cpu_captioner_never_moves():
    captioner = Captioner.tiny(seed=3)
    accelerator = FakeAccelerator(captioner.model)
    captioner.caption(noise_image(4))
    assert accelerator.moves == [] and accelerator.during_generation == ["cpu"]


def test_bfloat16_caption_on_cpu():
    captioner = Captioner.tiny(dtype=torch.bfloat16)
    assert captioner.model.dtype == torch.bfloat16
    assert captioner.describe()["dtype"] == "bfloat16"
    words = captioner.caption(noise_image(5)).split()
    assert 1 <= len(words) and set(words) <= _tiny_words()


def test_architecture_comes_from_the_config_model_type():
    assert _captioning_class("any/name", "blip") is BlipForConditionalGeneration
    assert _captioning_class("blip-looking/name", "blip-2") is Blip2ForConditionalGeneration
    with pytest.raises(InvalidInputError, match="'llava' model"):
        _captioning_class("Salesforce/blip-but-not-really", "llava")


def test_local_folder_loads_through_the_real_path(captioner, tmp_path):
    captioner.model.save_pretrained(tmp_path)
    captioner.processor.save_pretrained(tmp_path)
    loaded = Captioner.from_pretrained(str(tmp_path), device="cpu", max_new_tokens=captioner.max_new_tokens)
    assert isinstance(loaded.model, Blip2ForConditionalGeneration)
    assert isinstance(loaded.processor, Blip2Processor) and isinstance(loaded.processor.tokenizer, GPT2Tokenizer)
    assert loaded.caption(noise_image(6)) == captioner.caption(noise_image(6))


def test_uncached_weights_fail_fast_offline():
    started = time.perf_counter()
    with pytest.raises(ModelUnavailableError, match="blip2-opt-2.7b.*--models tiny"):
        Captioner.from_pretrained()
    with pytest.raises(ModelUnavailableError, match="blip-image-captioning-large"):
        Captioner.from_pretrained("Salesforce/blip-image-captioning-large")
    assert time.perf_counter() - started < 5.0


def test_a_named_image_is_captioned_once_and_as_its_pixels_would_be():
    fresh = Captioner.tiny()  # nothing remembered yet
    image = noise_image(6)
    named = fresh.caption(image, name="pixels-of-noise-6")
    assert fresh.calls == 1
    assert fresh.caption(image, name="pixels-of-noise-6") == named
    assert fresh.calls == 1 and fresh.reused_captions == 1  # remembered by its name, no model run
    assert Captioner.tiny().caption(image) == named  # the same caption as the pixels get unnamed
