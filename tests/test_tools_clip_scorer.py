"""CLIP scorer: normalised embeddings, one forward per call, similarities, loading rules."""

import json
import threading
import time

import numpy as np
import pytest
import torch
from open_clip.tokenizer import SimpleTokenizer
from PIL import Image

from arpo.core.errors import InvalidInputError, ModelUnavailableError
from arpo.tools.clip_scorer import ClipScorer, parse_clip_spec


@pytest.fixture(scope="module")
def scorer():
    return ClipScorer.tiny()


def noise_image(seed: int, size=(48, 40), mode="RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((size[1], size[0], 3)) * 255).astype("uint8")).convert(mode)


def test_embeddings_are_unit_length_float32_on_cpu(scorer):
    images = scorer.encode_images([noise_image(1), noise_image(2, mode="L"), noise_image(3, size=(10, 90))])
    texts = scorer.encode_texts(["a red fox", "an oil painting", ""])
    for embeddings in (images, texts):
        assert embeddings.shape == (3, 32)
        assert embeddings.dtype == torch.float32 and embeddings.device.type == "cpu"
        assert torch.allclose(embeddings.norm(dim=1), torch.ones(3), atol=1e-5)


def test_one_text_forward_per_call_whatever_the_batch(scorer):
    passes, texts = scorer.text_forward_passes, scorer.texts_encoded
    scorer.encode_texts([f"phrase number {index}" for index in range(50)])
    assert scorer.text_forward_passes == passes + 1
    assert scorer.texts_encoded == texts + 50
    scorer.text_image_similarity(scorer.encode_images([noise_image(1)])[0], ["a", "b", "c"])
    assert scorer.text_forward_passes == passes + 2
    assert scorer.texts_encoded == texts + 53


def test_a_text_is_tokenized_once_and_encodes_as_a_fresh_tokenization_would(monkeypatch):
    scorer = ClipScorer.tiny()
    tokenized: list[str] = []
    tokenizer = scorer.tokenizer
    monkeypatch.setattr(scorer, "tokenizer", lambda texts: (tokenized.extend(texts), tokenizer(texts))[1])
    first = scorer.encode_texts(["a cat, red", "a cat, blue", "a cat, red"])
    again = scorer.encode_texts(["a cat, blue", "a cat, green"])
    assert tokenized == ["a cat, red", "a cat, blue", "a cat, green"]
    with torch.inference_mode():
        direct = scorer.model.encode_text(tokenizer(["a cat, blue", "a cat, green"]), normalize=True)
    assert torch.allclose(again, direct.float(), atol=1e-6)
    assert torch.equal(first[0], first[2]) and torch.allclose(first[1], again[0], atol=1e-6)


def test_empty_batches_cost_no_forward(scorer):
    passes = scorer.text_forward_passes, scorer.image_forward_passes
    assert scorer.encode_texts([]).shape == (0, 32)
    assert scorer.encode_images([]).shape == (0, 32)
    assert scorer.text_image_similarity(torch.ones(32), []) == []
    assert (scorer.text_forward_passes, scorer.image_forward_passes) == passes


def test_image_counters_and_time(scorer):
    passes, seconds = scorer.image_forward_passes, scorer.forward_seconds
    scorer.encode_images([noise_image(1), noise_image(2)])
    assert scorer.image_forward_passes == passes + 1
    assert scorer.forward_seconds > seconds


def test_similarities_are_cosines(scorer):
    image_embeddings = scorer.encode_images([noise_image(1), noise_image(2)])
    assert scorer.image_similarity(image_embeddings[0], image_embeddings[0]) == pytest.approx(1.0, abs=1e-6)
    between = scorer.image_similarity(image_embeddings[0], image_embeddings[1])
    assert between == pytest.approx(float(image_embeddings[0] @ image_embeddings[1]), abs=1e-6)
    scaled_and_batched = scorer.image_similarity(image_embeddings[0] * 3, image_embeddings[0:1])
    assert scaled_and_batched == pytest.approx(1.0, abs=1e-6)
    texts = ["a red fox", "a blue whale", "an oil painting"]
    expected = (scorer.encode_texts(texts) @ image_embeddings[0]).tolist()
    assert scorer.text_image_similarity(image_embeddings[0], texts) == pytest.approx(expected, abs=1e-6)


def test_long_texts_are_truncated_to_the_context(scorer):
    prompt = "a red fox, " * 20
    assert scorer.count_tokens(prompt) == 80
    assert scorer.token_budget() == 75 and scorer.context_length == 77
    cut = "a red fox, " * 18 + "a red fox"  # exactly the first 75 tokens
    assert scorer.count_tokens(cut) == 75
    assert torch.allclose(scorer.encode_texts([prompt]), scorer.encode_texts([cut]), atol=1e-6)


def test_token_count_matches_open_clip(scorer):
    prompt = "An oil painting of a lighthouse at dusk, by Greg Rutkowski"
    assert scorer.count_tokens(prompt) == len(SimpleTokenizer().encode(prompt))


def test_tiny_is_fixed_by_its_seed(scorer):
    image = noise_image(4)
    same = ClipScorer.tiny(seed=0)
    other = ClipScorer.tiny(seed=1)
    assert torch.equal(same.encode_images([image]), scorer.encode_images([image]))
    assert not torch.allclose(other.encode_images([image]), scorer.encode_images([image]))
    assert same.name == scorer.name != other.name


def test_concurrent_encoding_matches_serial(scorer):
    texts = [f"a painting of {index} foxes" for index in range(8)]
    expected = scorer.encode_texts(texts)
    results = [None] * 8

    def worker(index):
        results[index] = scorer.encode_texts([texts[index]])[0]

    threads = [threading.Thread(target=worker, args=(index,)) for index in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert torch.allclose(torch.stack(results), expected, atol=1e-5)


def test_describe_is_json(scorer):
    description = scorer.describe()
    json.dumps(description)
    assert description["name"] == "tiny-clip-seed0"
    assert description["embed_dim"] == 32 and description["context_length"] == 77


def test_local_folder_loads_through_the_real_path(scorer, tmp_path):
    config = {
        "model_cfg": {
            "embed_dim": 32,
            "vision_cfg": {"layers": 2, "width": 32, "head_width": 16, "patch_size": 8, "image_size": 32},
            "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
        },
        "preprocess_cfg": {},
    }
    (tmp_path / "open_clip_config.json").write_text(json.dumps(config))
    torch.save(scorer.model.state_dict(), tmp_path / "open_clip_pytorch_model.bin")
    loaded = ClipScorer.from_pretrained(f"local-dir:{tmp_path}", device="cpu")
    image = noise_image(5)
    assert torch.allclose(loaded.encode_images([image]), scorer.encode_images([image]), atol=1e-5)
    assert torch.allclose(loaded.encode_texts(["a red fox"]), scorer.encode_texts(["a red fox"]), atol=1e-5)


def test_uncached_weights_fail_fast_offline():
    started = time.perf_counter()
    with pytest.raises(ModelUnavailableError, match="ViT-L-14/openai.*--models tiny"):
        ClipScorer.from_pretrained()
    assert time.perf_counter() - started < 5.0


def test_unknown_names_are_input_errors():
    with pytest.raises(InvalidInputError, match="Unknown CLIP model"):
        ClipScorer.from_pretrained("ViT-Q-99")
    with pytest.raises(InvalidInputError, match="Unknown weights 'nonsense'"):
        ClipScorer.from_pretrained("ViT-B-32", "nonsense")


def test_parse_clip_spec():
    assert parse_clip_spec("ViT-L-14/openai") == ("ViT-L-14", "openai")
    assert parse_clip_spec("ViT-H-14/laion2b_s32b_b79k") == ("ViT-H-14", "laion2b_s32b_b79k")
    assert parse_clip_spec("ViT-B-32") == ("ViT-B-32", None)
    assert parse_clip_spec("hf-hub:laion/CLIP-ViT-g-14") == ("hf-hub:laion/CLIP-ViT-g-14", None)


def test_a_named_image_is_encoded_once_per_process():
    scorer = ClipScorer.tiny()
    image = noise_image(4)
    first = scorer.named_image_embedding(image, "pixels-of-image-4")
    assert scorer.image_forward_passes == 1
    assert torch.equal(scorer.named_image_embedding(image, "pixels-of-image-4"), first)
    assert scorer.image_forward_passes == 1  # remembered: no second preprocessing or forward
    assert torch.allclose(first, scorer.encode_images([image])[0])
