"""Phrase banks and the CLIP phrase index."""

import pytest
import torch

from arpo.core.errors import InvalidInputError
from arpo.tools.clip_scorer import ClipScorer
from arpo.tools.phrase_bank import BANK_NAMES, PhraseIndex, load_phrase_bank

PHRASES = ["oil painting", "watercolor", "a red fox", "snowy forest", "neon lights", "by Claude Monet"]


@pytest.fixture(scope="module")
def scorer():
    return ClipScorer.tiny()


@pytest.fixture
def index(scorer, tmp_path):
    return PhraseIndex(scorer, PHRASES, tmp_path / "embeddings")


def test_all_banks_load_clean():
    banks = load_phrase_bank()
    assert set(banks) == set(BANK_NAMES)
    assert len(banks["mediums"]) > 50 and len(banks["movements"]) > 100
    assert len(banks["flavors"]) > 90_000 and len(banks["artists"]) > 5_000
    for phrases in banks.values():
        assert all(phrase and phrase == phrase.strip() for phrase in phrases)
        assert len(set(phrases)) == len(phrases)
    assert all(phrase.startswith("by ") for phrase in banks["artists"])
    assert "oil painting" in banks["mediums"] or any("oil" in phrase for phrase in banks["mediums"])


def test_bank_size_limit_and_selection():
    banks = load_phrase_bank(("flavors", "artists"), max_phrases_per_bank=40)
    assert set(banks) == {"flavors", "artists"}
    assert [len(phrases) for phrases in banks.values()] == [40, 40]
    assert banks["flavors"] == load_phrase_bank(("flavors",))["flavors"][:40]


def test_unknown_bank_is_an_input_error():
    with pytest.raises(InvalidInputError, match="Unknown phrase bank 'colours'"):
        load_phrase_bank(("colours",))


def test_top_k_orders_by_similarity(scorer, index):
    reference = scorer.encode_texts(["a red fox in a snowy forest"])[0]
    expected_scores = (scorer.encode_texts(PHRASES) @ reference).tolist()
    expected = sorted(zip(PHRASES, expected_scores), key=lambda pair: pair[1], reverse=True)
    ranked = index.top_k(reference, 4)
    assert [phrase for phrase, _ in ranked] == [phrase for phrase, _ in expected[:4]]
    assert [score for _, score in ranked] == pytest.approx([score for _, score in expected[:4]], abs=1e-5)


def test_top_k_skips_excluded_phrases_ignoring_case(scorer, index):
    reference = scorer.encode_texts(["a red fox"])[0]
    best_two = [phrase for phrase, _ in index.top_k(reference, 2)]
    excluded = {best_two[0].upper(), f"  {best_two[1]}  "}
    ranked = index.top_k(reference, 10, exclude=excluded)
    assert len(ranked) == len(PHRASES) - 2
    assert not set(best_two) & {phrase for phrase, _ in ranked}
    assert index.top_k(reference, 10, exclude=set(PHRASES)) == []
    assert index.top_k(reference, 0) == []


def test_embeddings_are_cached_on_disk_and_reused(scorer, tmp_path):
    cache = tmp_path / "embeddings"
    passes = scorer.text_forward_passes
    first = PhraseIndex(scorer, PHRASES, cache)
    assert scorer.text_forward_passes == passes + 1
    assert first.cache_path.is_file() and first.cache_path.parent == cache
    second = PhraseIndex(scorer, PHRASES, cache)
    assert scorer.text_forward_passes == passes + 1  # loaded, not encoded again
    assert torch.equal(first.embeddings, second.embeddings)
    PhraseIndex(scorer, PHRASES[:-1], cache)  # another phrase list is another cache entry
    assert scorer.text_forward_passes == passes + 2
    other_scorer = ClipScorer.tiny(seed=1)
    other = PhraseIndex(other_scorer, PHRASES, cache)  # another model is another cache entry
    assert other_scorer.text_forward_passes == 1
    assert other.cache_path != first.cache_path


def test_default_cache_lives_under_arpo_home(scorer, arpo_home):
    built = PhraseIndex(scorer, PHRASES)
    assert built.cache_path.parent == arpo_home / "cache" / "phrase-embeddings"


def test_unreadable_cache_is_rebuilt(scorer, tmp_path):
    first = PhraseIndex(scorer, PHRASES, tmp_path)
    first.cache_path.write_bytes(b"not a tensor")
    passes = scorer.text_forward_passes
    rebuilt = PhraseIndex(scorer, PHRASES, tmp_path)
    assert scorer.text_forward_passes == passes + 1
    assert torch.allclose(rebuilt.embeddings, first.embeddings)


def test_large_banks_are_embedded_in_large_batches(scorer, tmp_path):
    flavors = load_phrase_bank(("flavors",), max_phrases_per_bank=3000)["flavors"]
    passes = scorer.text_forward_passes
    built = PhraseIndex(scorer, flavors, tmp_path, batch_size=1024)
    assert scorer.text_forward_passes == passes + 3
    assert built.embeddings.shape == (3000, 32)
    assert len(built) == 3000
