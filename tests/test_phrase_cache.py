"""The phrase-bank embedding cache across processes, and which models may share one."""

from __future__ import annotations

import os
import subprocess
import sys

import torch

from arpo.tools.clip_scorer import ClipScorer
from arpo.tools.phrase_bank import PhraseIndex, load_phrase_bank, weights_digest

PHRASES = ["oil painting", "watercolor", "a red fox", "snowy forest", "neon lights", "by Claude Monet"]

# Builds the index of the first 300 flavors with the tiny scorer in the default cache ($ARPO_HOME) and
# prints how many text forward passes that took.
BUILD_INDEX = """
from arpo.tools.clip_scorer import ClipScorer
from arpo.tools.phrase_bank import PhraseIndex, load_phrase_bank
scorer = ClipScorer.tiny()
PhraseIndex(scorer, load_phrase_bank(("flavors",), max_phrases_per_bank=300)["flavors"], batch_size=100)
print(scorer.text_forward_passes)
"""


def test_concurrent_runs_write_one_cache_that_the_next_process_loads(arpo_home):
    env = dict(os.environ, ARPO_HOME=str(arpo_home))
    runs = [subprocess.Popen([sys.executable, "-c", BUILD_INDEX], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True) for _ in range(2)]
    outputs = [run.communicate(timeout=300) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], [err for _, err in outputs]
    assert all(int(out.split()[-1]) in (0, 3) for out, _ in outputs)  # each embedded the bank or loaded it whole
    cache = arpo_home / "cache" / "phrase-embeddings"
    assert [path.suffix for path in cache.iterdir()] == [".pt"]  # one entry, no temporary file left

    scorer = ClipScorer.tiny()  # this process: a fresh model object, the same weights
    flavors = load_phrase_bank(("flavors",), max_phrases_per_bank=300)["flavors"]
    loaded = PhraseIndex(scorer, flavors, batch_size=100)
    assert scorer.text_forward_passes == 0  # read from the other processes' cache, not embedded again
    assert torch.allclose(loaded.embeddings, scorer.encode_texts(flavors), atol=1e-5)


def test_models_a_name_does_not_tell_apart_never_share_a_cache(tmp_path):
    base = PhraseIndex(ClipScorer.tiny(seed=0), PHRASES, tmp_path)
    half = ClipScorer.tiny(seed=0, dtype=torch.float16)
    reseeded = ClipScorer.tiny(seed=1)
    # Random weights under another model's name: the name alone would have found seed 0's embeddings.
    impostor = ClipScorer(reseeded.model, reseeded.preprocess, reseeded.tokenizer, name="tiny-clip-seed0")
    for scorer in (half, impostor):
        index = PhraseIndex(scorer, PHRASES, tmp_path)
        assert index.cache_path != base.cache_path
        assert scorer.text_forward_passes == 1  # embedded with its own weights
        assert torch.allclose(index.embeddings, scorer.encode_texts(PHRASES), atol=1e-3)
    assert len(list(tmp_path.glob("*.pt"))) == 3


def test_weights_digest_follows_the_values_not_the_object():
    first, same, retrained = (ClipScorer.tiny(seed=0).model for _ in range(3))
    assert weights_digest(first) == weights_digest(same)
    with torch.no_grad():
        for parameter in retrained.transformer.parameters():  # fine-tuning moves every value a little
            parameter.mul_(1.001)
    assert weights_digest(retrained) != weights_digest(first)
    assert weights_digest(ClipScorer.tiny(seed=0, dtype=torch.float16).model) != weights_digest(first)
