"""Backbones: every kind builds (tiny versions offline), prepares images, and yields one vector per image."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

from arpo.core.errors import InvalidInputError, ModelUnavailableError
from arpo.tools.regressor.backbones import build_backbone, parse_backbone_spec
from arpo.tools.regressor.checkpoint import load_checkpoint, save_checkpoint
from arpo.tools.regressor.model import PromptRegressor, RegressorConfig
from arpo.tools.regressor.vocabulary import Vocabulary

real_weights = pytest.mark.skipif(os.environ.get("ARPO_REAL_WEIGHTS") != "1", reason="needs ARPO_REAL_WEIGHTS=1")


IMAGES = [Image.new("RGB", (40, 30), (200, 10, 10)), Image.new("RGB", (30, 40), (10, 10, 200))]


@pytest.mark.parametrize(
    ("spec", "feature_dim", "prepared_keys"),
    [
        ("tiny", 128, {"pixels"}),
        ("clip:tiny", 32, {"pixels"}),
        ("timm:tiny", 32, {"pixels"}),
        ("unet:tiny", 16, {"latents", "caption_states"}),
    ],
)
def test_tiny_backbones_give_one_feature_vector_per_image(spec, feature_dim, prepared_keys):
    backbone = build_backbone(spec)
    prepared = backbone.prepare(IMAGES)
    assert set(prepared) == prepared_keys
    features = backbone(prepared)
    assert features.shape == (2, feature_dim) == (2, backbone.feature_dim)
    assert torch.isfinite(features).all()
    assert not torch.allclose(features[0], features[1])  # a red and a blue image differ


def test_unet_backbone_trains_only_the_encoder():
    backbone = build_backbone("unet:tiny")
    names = {name.split(".")[0] for name, _ in backbone.named_parameters()}
    assert names == {"conv_in", "time_embedding", "down_blocks", "mid_block"}


def test_regressor_with_clip_tower_round_trips_through_a_checkpoint(tmp_path):
    config = RegressorConfig(backbone="clip:tiny", target_space="tiny", embedding_dim=64, vocabulary_size=3)
    model = PromptRegressor(build_backbone("clip:tiny"), config)
    save_checkpoint(tmp_path, model, Vocabulary(["red", "blue", "cat"]))
    loaded = load_checkpoint(tmp_path, device="cpu")
    np.testing.assert_allclose(loaded.model.predict(IMAGES), model.predict(IMAGES), atol=1e-6)
    output = loaded.model(loaded.model.backbone.prepare(IMAGES))
    assert output.embedding.shape == (2, 64) and output.vocabulary_logits.shape == (2, 3)
    assert loaded.bank is None


@pytest.mark.parametrize("spec", ["resnet", "tiny:extra", "clip", "timm:"])
def test_bad_specs_are_one_line_errors(spec):
    with pytest.raises(InvalidInputError):
        parse_backbone_spec(spec)


def test_unknown_model_names_and_missing_weights_fail_fast():
    with pytest.raises(InvalidInputError, match="Unknown timm model"):
        build_backbone("timm:no_such_net_42")
    with pytest.raises(InvalidInputError, match="Unknown open_clip model"):
        build_backbone("clip:NoSuchCLIP/none", pretrained=False)
    with pytest.raises(ModelUnavailableError, match="--models tiny"):
        build_backbone("clip:ViT-B-32/openai")  # HF_HUB_OFFLINE is set by the test setup


def test_a_clip_backbone_rebuilt_without_weights_has_its_tags_activation():
    # A checkpoint reloads into this architecture; OpenAI's weights were trained with QuickGELU.
    tower = build_backbone("clip:ViT-B-32/openai", pretrained=False)
    activations = {type(module).__name__ for module in tower.modules() if "GELU" in type(module).__name__}
    assert activations == {"QuickGELU"}


@real_weights
@pytest.mark.real_weights
@pytest.mark.parametrize(
    ("spec", "feature_dim"),
    [
        ("clip:ViT-B-32/openai", 512),
        ("timm:vit_base_patch16_224", 768),
        ("timm:swin_tiny_patch4_window7_224", 768),
        ("unet:sd15", 1280),
    ],
)
def test_pretrained_backbones_load_by_name(spec, feature_dim):
    backbone = build_backbone(spec, device="cpu")
    assert backbone(backbone.prepare(IMAGES)).shape == (2, feature_dim)
