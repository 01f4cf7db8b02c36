"""Model stacks: tiny end to end, real names fail fast offline, real weights behind ARPO_REAL_WEIGHTS."""

import json
import os
import time

import numpy as np
import pytest
from PIL import Image

from arpo.core.errors import ModelUnavailableError
from arpo.tools.captioner import Captioner
from arpo.tools.clip_scorer import ClipScorer
from arpo.tools.model_stack import ModelStack, build_model_stack
from arpo.tools.text_to_image import TextToImage


def test_tiny_stack_runs_one_loop_step():
    stack = build_model_stack("tiny")
    assert isinstance(stack, ModelStack) and stack.is_tiny and stack.name == "tiny"
    reference = Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype("uint8"))
    prompt = stack.captioner.caption(reference)
    generated = stack.text_to_image.generate(prompt, seed=0)
    reference_embedding, generated_embedding = stack.clip.encode_images([reference, generated])
    similarity = stack.clip.image_similarity(reference_embedding, generated_embedding)
    assert prompt and -1.0 <= similarity <= 1.0
    assert stack.clip.text_image_similarity(reference_embedding, [prompt])[0] == pytest.approx(
        float(stack.clip.encode_texts([prompt])[0] @ reference_embedding), abs=1e-6
    )


def test_tiny_stack_description_is_json():
    description = build_model_stack("tiny").describe()
    assert json.loads(json.dumps(description))["is_tiny"] is True
    assert description["text_to_image"]["pipeline"] == "StableDiffusionPipeline"
    assert description["clip"]["name"] == "tiny-clip-seed0"
    assert description["captioner"]["architecture"] == "Blip2ForConditionalGeneration"  # the real default is BLIP-2


def test_real_stack_without_cached_weights_fails_fast_offline():
    started = time.perf_counter()
    with pytest.raises(ModelUnavailableError, match="--models tiny"):
        build_model_stack("sd15")
    assert time.perf_counter() - started < 10.0


def test_any_tiny_part_marks_the_stack_tiny(monkeypatch):
    # Real text-to-image weights are not available here; stand the tiny one in for "sd15".
    monkeypatch.setattr(TextToImage, "from_pretrained", classmethod(lambda cls, name, **kwargs: cls.tiny()))
    mixed = build_model_stack("sd15", clip_model="tiny", captioner="tiny")
    assert mixed.is_tiny and mixed.name == "sd15"


def test_real_stack_defaults_name_vit_l_14_and_blip2(monkeypatch):
    asked = {}

    def fake_text_to_image(cls, name, **kwargs):
        asked["text_to_image"] = name
        return cls.tiny()

    def fake_clip(cls, model, pretrained, device=None, **kwargs):
        asked["clip"] = (model, pretrained)
        return cls.tiny()

    def fake_captioner(cls, name, device=None, **kwargs):
        asked["captioner"] = name
        return cls.tiny()

    monkeypatch.setattr(TextToImage, "from_pretrained", classmethod(fake_text_to_image))
    monkeypatch.setattr(ClipScorer, "from_pretrained", classmethod(fake_clip))
    monkeypatch.setattr(Captioner, "from_pretrained", classmethod(fake_captioner))
    stack = build_model_stack("sdxl")
    assert asked == {
        "text_to_image": "sdxl",
        "clip": ("ViT-L-14", "openai"),
        "captioner": "Salesforce/blip2-opt-2.7b",
    }
    assert not stack.is_tiny
    build_model_stack(
        "sdxl", clip_model="ViT-H-14/laion2b_s32b_b79k", captioner="Salesforce/blip-image-captioning-large"
    )
    assert asked["clip"] == ("ViT-H-14", "laion2b_s32b_b79k")
    assert asked["captioner"] == "Salesforce/blip-image-captioning-large"


@pytest.mark.real_weights
@pytest.mark.skipif(
    os.environ.get("ARPO_REAL_WEIGHTS") != "1", reason="needs cached weights: set ARPO_REAL_WEIGHTS=1"
)
def test_sd15_stack_with_real_weights():
    stack = build_model_stack("sd15")
    assert not stack.is_tiny
    assert stack.text_to_image.token_budget() == 75
    assert stack.text_to_image.describe()["revision"]  # a cache snapshot has a commit hash
    image = stack.text_to_image.generate("a red fox in the snow, oil painting", seed=0)
    assert image.size == (512, 512)
    fox, whale = stack.clip.text_image_similarity(
        stack.clip.encode_images([image])[0], ["a red fox in the snow", "a blue whale in the ocean"]
    )
    assert fox > whale
    assert stack.captioner.caption(image)
