"""Captioner: tiny BLIP captions, thread safety, fallback, loading rules."""

import json
import threading
import time

import numpy as np
import pytest
from PIL import Image
from transformers import Blip2ForConditionalGeneration, BlipForConditionalGeneration

from arpo.errors import InvalidInputError, ModelUnavailableError
from arpo.tools.captioner import FALLBACK_CAPTION, Captioner, _captioning_class


@pytest.fixture(scope="module")
def captioner():
    return Captioner.tiny()


def noise_image(seed: int, mode="RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((40, 56, 3)) * 255).astype("uint8")).convert(mode)


def test_tiny_caption_is_real_words_from_its_vocabulary(captioner):
    caption = captioner.caption(noise_image(1))
    words = caption.split()
    assert 1 <= len(words) <= captioner.max_new_tokens
    vocabulary = captioner.processor.tokenizer.get_vocab()
    assert all(word in vocabulary for word in words)
    assert not any(word.startswith("[") for word in words)  # special tokens are not decoded


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

    def worker(index):
        produced[index] = captioner.caption(images[index])

    threads = [threading.Thread(target=worker, args=(index,)) for index in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert produced == expected


def test_empty_decoding_falls_back_to_a_neutral_caption(captioner, monkeypatch):
    monkeypatch.setattr(captioner.processor, "batch_decode", lambda *args, **kwargs: ["  "])
    assert captioner.caption(noise_image(1)) == FALLBACK_CAPTION == "an image"


def test_counters_and_description(captioner):
    calls = captioner.calls
    captioner.caption(noise_image(1))
    assert captioner.calls == calls + 1 and captioner.forward_seconds > 0
    description = captioner.describe()
    json.dumps(description)
    assert description["architecture"] == "BlipForConditionalGeneration"
    assert description["model"] == "tiny"


def test_architecture_comes_from_the_config_model_type():
    assert _captioning_class("any/name", "blip") is BlipForConditionalGeneration
    assert _captioning_class("blip-looking/name", "blip-2") is Blip2ForConditionalGeneration
    with pytest.raises(InvalidInputError, match="'llava' model"):
        _captioning_class("Salesforce/blip-but-not-really", "llava")


def test_local_folder_loads_through_the_real_path(captioner, tmp_path):
    captioner.model.save_pretrained(tmp_path)
    captioner.processor.save_pretrained(tmp_path)
    loaded = Captioner.from_pretrained(str(tmp_path), device="cpu", max_new_tokens=captioner.max_new_tokens)
    assert isinstance(loaded.model, BlipForConditionalGeneration)
    assert loaded.caption(noise_image(6)) == captioner.caption(noise_image(6))


def test_uncached_weights_fail_fast_offline():
    started = time.perf_counter()
    with pytest.raises(ModelUnavailableError, match="blip2-opt-2.7b.*--models tiny"):
        Captioner.from_pretrained()
    with pytest.raises(ModelUnavailableError, match="blip-image-captioning-large"):
        Captioner.from_pretrained("Salesforce/blip-image-captioning-large")
    assert time.perf_counter() - started < 5.0
