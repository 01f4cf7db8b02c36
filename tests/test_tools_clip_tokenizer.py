"""The offline CLIP tokenizer matches open_clip's own tokenizer."""

import pytest
from open_clip.tokenizer import SimpleTokenizer

from arpo.tools import clip_tokenizer
from arpo.tools.clip_tokenizer import offline_clip_tokenizer

PROMPTS = [
    "a photo of a cat",
    "An oil painting of a lighthouse at dusk, by Greg Rutkowski, trending on artstation, 4k",
    "portrait of a woman, soft light; 85mm lens!! (bokeh)",
    "it's a cyberpunk city-scape with neon signs at night",
    "café in Montréal, watercolour, déjà vu",
]


@pytest.mark.parametrize("prompt", PROMPTS)
def test_token_ids_equal_open_clips(tmp_path, prompt):
    tokenizer = offline_clip_tokenizer(tmp_path)
    reference = SimpleTokenizer()
    expected = [reference.sot_token_id, *reference.encode(prompt), reference.eot_token_id]
    assert tokenizer(prompt)["input_ids"] == expected


def test_tokenizer_has_clip_shape(tmp_path):
    tokenizer = offline_clip_tokenizer(tmp_path)
    assert len(tokenizer) == 49408
    assert tokenizer.model_max_length == 77
    assert tokenizer.bos_token_id == 49406 and tokenizer.eos_token_id == 49407
    padded = tokenizer("a cat", padding="max_length", max_length=77, truncation=True)["input_ids"]
    assert len(padded) == 77


def test_files_written_once_under_arpo_home_and_reused(arpo_home, monkeypatch):
    first = offline_clip_tokenizer()
    folder = arpo_home / "cache" / "clip-tokenizer"
    assert {path.name for path in folder.iterdir()} == {"vocab.json", "merges.txt"}
    written_at = (folder / "vocab.json").stat().st_mtime_ns
    assert offline_clip_tokenizer() is first
    # A new process (an empty in-process cache) reads the files instead of writing them again.
    monkeypatch.setattr(clip_tokenizer, "_built", {})
    second = offline_clip_tokenizer()
    assert second is not first
    assert second("a red fox")["input_ids"] == first("a red fox")["input_ids"]
    assert (folder / "vocab.json").stat().st_mtime_ns == written_at
