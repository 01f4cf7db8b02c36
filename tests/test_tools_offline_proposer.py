"""Offline proposer: bank phrases ranked by CLIP, never repeating tried or present phrases."""

import pytest

from arpo.agents.offline_proposer import TINY_SCORER_PHRASES_PER_BANK, OfflineProposer
from arpo.agents.proposal import ProposalRequest
from arpo.tools.clip_scorer import ClipScorer
from arpo.tools.phrase_bank import PhraseIndex, load_phrase_bank

PHRASES = [
    "oil painting", "watercolor", "red fox", "snowy forest", "neon lights", "by Claude Monet",
    "golden hour", "highly detailed", "studio lighting", "pencil sketch", "fox", "winter",
]


@pytest.fixture(scope="module")
def scorer():
    return ClipScorer.tiny()


@pytest.fixture
def reference(scorer):
    return scorer.encode_texts(["a red fox in a snowy forest at golden hour"])[0]


@pytest.fixture
def single_index_proposer(scorer, tmp_path):
    return OfflineProposer(scorer, PhraseIndex(scorer, PHRASES, tmp_path))


def test_candidates_are_ranked_by_similarity_to_the_reference(scorer, reference, single_index_proposer):
    proposed = single_index_proposer.propose(ProposalRequest(current_prompt="", max_candidates=5), reference)
    scores = dict(zip(PHRASES, (scorer.encode_texts(PHRASES) @ reference).tolist()))
    assert proposed == sorted(PHRASES, key=scores.get, reverse=True)[:5]


def test_tried_and_present_phrases_are_never_proposed(reference, single_index_proposer):
    request = ProposalRequest(
        current_prompt="A Red Fox in the WINTER, oil painting",
        tried=["Golden Hour", "neon lights"],
        max_candidates=12,
    )
    proposed = single_index_proposer.propose(request, reference)
    used = {"red fox", "fox", "winter", "oil painting", "golden hour", "neon lights"}
    assert {phrase.lower() for phrase in proposed}.isdisjoint(used)
    assert set(proposed) == set(PHRASES) - used


def test_words_inside_other_words_do_not_count_as_present(reference, single_index_proposer):
    proposed = single_index_proposer.propose(ProposalRequest(current_prompt="foxglove, wintery"), reference)
    assert "fox" in proposed and "winter" in proposed


def test_repeated_rounds_never_repeat_a_phrase(reference, single_index_proposer):
    prompt, tried, seen = "a photo", [], []
    for _ in range(6):
        proposed = single_index_proposer.propose(
            ProposalRequest(current_prompt=prompt, tried=tried, max_candidates=3), reference
        )
        assert not set(proposed) & set(seen)
        seen += proposed
        tried += proposed
        if proposed:
            prompt += ", " + proposed[0]  # the loop keeps some of them
    assert sorted(seen) == sorted(PHRASES)


def test_accepts_a_plain_list_embedding(reference, single_index_proposer):
    request = ProposalRequest(current_prompt="", max_candidates=4)
    assert single_index_proposer.propose(request, reference.tolist()) == single_index_proposer.propose(
        request, reference
    )


def test_each_bank_contributes_up_to_per_bank(scorer, reference, tmp_path):
    proposer = OfflineProposer(scorer, per_bank=2, max_phrases_per_bank=60, cache_dir=tmp_path)
    proposed = proposer.propose(ProposalRequest(current_prompt="a fox", max_candidates=12), reference)
    banks = load_phrase_bank(max_phrases_per_bank=60)
    per_bank = {name: [phrase for phrase in proposed if phrase in phrases] for name, phrases in banks.items()}
    assert len(proposed) == 8
    assert all(len(phrases) == 2 for phrases in per_bank.values())
    assert all(phrase.startswith("by ") for phrase in per_bank["artists"])
    capped = proposer.propose(ProposalRequest(current_prompt="a fox", max_candidates=3), reference)
    assert capped == proposed[:3]


def test_tiny_scorer_embeds_only_the_head_of_each_bank(scorer, reference, tmp_path):
    texts_before = scorer.texts_encoded
    proposer = OfflineProposer(scorer, cache_dir=tmp_path)
    proposed = proposer.propose(ProposalRequest(current_prompt="", max_candidates=12), reference)
    heads = load_phrase_bank(max_phrases_per_bank=TINY_SCORER_PHRASES_PER_BANK)
    assert len(proposed) == 12
    assert all(any(phrase in phrases for phrases in heads.values()) for phrase in proposed)
    assert scorer.texts_encoded - texts_before == sum(map(len, heads.values()))
