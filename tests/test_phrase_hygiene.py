"""Phrase hygiene on replies of real small models: what becomes a candidate, what is dropped and why."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from arpo.agents.scripted_server import ScriptedReply
from fixtures_brain import brain_server, scripted_backend  # noqa: F401

from arpo.agents import templates
from arpo.agents.phrase_hygiene import PhraseScreen
from arpo.agents.proposal import PHRASE_WORDS, ProposalRequest
from arpo.agents.reply_parsing import parse_phrase_list
from arpo.agents.roles import LlmProposer
from arpo.graphs.prompt_text import phrase_family_key, phrase_key

FIXTURES = json.loads((Path(__file__).parent / "fixtures" / "weak_model_replies.json").read_text())["replies"]


def _request(entry: dict) -> ProposalRequest:
    return ProposalRequest(current_prompt=entry["current_prompt"], differences=entry["differences"])


@pytest.mark.parametrize("entry", FIXTURES, ids=[entry["id"] for entry in FIXTURES])
def test_weak_model_replies_keep_only_clean_phrases(entry):
    request = _request(entry)
    screen = PhraseScreen(request, templates.proposal_instructions(request))

    screened = screen.screen(parse_phrase_list(entry["reply"], distinct=False))

    assert screened.kept == entry["kept"]
    assert [[d.phrase, d.reason] for d in screened.dropped] == entry["dropped"]


def test_default_word_range_is_two_to_six():
    assert PHRASE_WORDS == (2, 6)
    request = ProposalRequest(current_prompt="a heron")
    assert (request.min_words, request.max_words) == PHRASE_WORDS
    assert "two to six words" in templates.proposal_prompt(request)


def test_near_duplicates_meet_under_case_plural_and_word_order():
    assert phrase_family_key("Color palette variations") == phrase_family_key("variation color palette")
    assert phrase_family_key("soft shadows") == phrase_family_key("soft shadow")
    assert phrase_family_key("glass") != phrase_family_key("grass")
    assert phrase_key("Rim-Light!") == "rim light"


def test_phrases_banned_or_tried_against_this_prompt_stay_out():
    request = ProposalRequest(current_prompt="a heron", tried=["misty harbours"], banned=["ink wash"])
    screen = PhraseScreen(request, templates.proposal_instructions(request))
    screened = screen.screen(["Ink Wash", "misty harbour", "paper grain texture"])
    assert screened.kept == ["paper grain texture"]
    assert [d.reason for d in screened.dropped] == ["banned", "tried with this prompt"]


def test_legitimate_phrases_that_share_a_word_with_the_template_are_kept():
    request = ProposalRequest(current_prompt="a heron", differences="Image 1 has visible text on a sign.")
    screen = PhraseScreen(request, templates.proposal_instructions(request))
    phrases = ["dramatic lighting", "visible text sign", "minimalist composition", "short grass field"]
    assert screen.screen(phrases).kept == phrases


@pytest.mark.parametrize("entry", [e for e in FIXTURES if not e["kept"]], ids=lambda e: e["id"])
def test_a_babbling_model_is_repaired_once_then_reported_unusable(brain_server, entry):
    brain_server.enqueue(ScriptedReply.text(entry["reply"]), ScriptedReply.text(entry["reply"]))
    backend = scripted_backend(brain_server)

    proposal = LlmProposer(backend).propose(_request(entry))

    assert len(brain_server.requests) == 2, "one repair request, no more"
    assert proposal.phrases == [] and proposal.unusable
    # Both replies' drops are kept for the history.
    assert len(proposal.dropped) == 2 * len(entry["dropped"])
    repair = brain_server.requests[1].messages[-1]["content"]
    repair = repair if isinstance(repair, str) else repair[0]["text"]
    assert entry["dropped"][0][1] in repair
