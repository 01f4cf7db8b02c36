"""Phrase hygiene on replies of real small models: what becomes a candidate, what is dropped and why."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fixtures_brain import brain_server, scripted_backend  # noqa: F401

from arpo.agents import templates
from arpo.agents.phrase_hygiene import (
    ECHOES_INSTRUCTIONS,
    ECHOES_PROMPT,
    FRAGMENT,
    NEAR_DUPLICATE,
    NOT_WORDS,
    PhraseScreen,
)
from arpo.agents.proposal import PHRASE_WORDS, ProposalRequest
from arpo.agents.reply_parsing import parse_phrase_list
from arpo.agents.roles import LlmProposer
from scripted_server import ScriptedReply
from arpo.core.phrases import phrase_family_key, phrase_key
from arpo.tools.phrase_bank import load_phrase_bank

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
    assert phrase_key("by Albert Joseph Pénot") == "by albert joseph pénot"
    assert phrase_key("кошка на окне") == "кошка на окне"
    assert phrase_family_key("by Albert Joseph Penot") == phrase_family_key("by Albert Joseph Pénot")


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


def _screen(current_prompt: str, differences: str = "") -> PhraseScreen:
    request = ProposalRequest(current_prompt=current_prompt, differences=differences)
    return PhraseScreen(request, templates.proposal_instructions(request))


def test_url_pieces_markup_and_glued_scripts_are_not_words():
    # Every one written by Gemma 3 270M behind llama-cpp-python in a real run (see the fixtures).
    screen = _screen("a cat")
    for phrase in ["//raw.githubusercontent. altınauser", "raw.githubusercontent altınauser", "/INST",
                   "a_1056894723d9e6f9c9b5.jpg photo", "тельнуюmodel cat", "<end_of_turn> cat",
                   "visit www.example.org", "see https site", "сinematic lighting"]:
        assert screen.reason_to_drop(phrase) == NOT_WORDS, phrase


def test_names_numbers_and_other_languages_are_words():
    screen = _screen("a cat")
    for phrase in ["by J.M.W. Turner", "by Albert Joseph Pénot", "by Alexej von Jawlensky",
                   "35mm f/1.8 lens", "van gogh's brushwork", "black & white photo", "sci-fi cityscape",
                   "Kinder im Garten", "кошка на окне", "水墨画 style", "by Mike \"Beeple\" Winkelmann",
                   "(1920s) film still", "水墨画の スタイル", "CG插画 风格"]:
        assert screen.reason_to_drop(phrase) is None, phrase


def test_clause_fragments_and_talk_to_the_reader_are_dropped_but_phrasal_endings_stay():
    screen = _screen("a cat")
    for phrase in ["The cat in your picture is", "a kitten with", "a cat in the style of",
                   "the background of the", "as you can see", "matches your reference",
                   "the cat in your picture"]:
        assert screen.reason_to_drop(phrase) == FRAGMENT, phrase
    for phrase in ["zoomed in", "street lights on", "looming over you", "rusty trash can", "by Kun Can",
                   "by Gu An", "your name poster", "close up portrait"]:
        assert screen.reason_to_drop(phrase) is None, phrase


def test_artist_medium_and_movement_banks_pass_the_new_checks():
    """The phrase banks are what prompts for SD are made of: the new checks must not reject them (the
    one exception is a medium that really does end mid-phrase)."""
    screen = PhraseScreen(ProposalRequest(current_prompt="", min_words=1, max_words=20), "")
    rejected = [
        phrase
        for phrases in load_phrase_bank(["artists", "mediums", "movements"]).values()
        for phrase in phrases
        if "," not in phrase and screen.reason_to_drop(phrase) in (NOT_WORDS, FRAGMENT)
    ]
    assert rejected == ["an illustration of"]


def test_the_template_words_a_model_copies_mid_sentence_echo_the_instructions():
    # Gemma 3 270M's reply ended by repeating the template: "..., each describing what Image"
    differences = "Image 1 shows a tabby cat's face in close-up; Image 2 shows a blurry grey shape."
    screen = _screen("a cat", differences)
    assert screen.reason_to_drop("each describing what Image") == ECHOES_INSTRUCTIONS
    # The differences' own words are the picture's, not the template's.
    assert screen.reason_to_drop("tabby cat face") is None
    assert screen.reason_to_drop("blurry grey shape") is None


def test_semicolons_pipes_and_bullets_separate_phrases_judged_alone():
    # Gemma 3 270M wrote "young woman's bedroom; close-up photograph" as one phrase.
    screen = _screen("a cat, tabby fur, close-up photograph")
    screened = screen.screen(
        ["young woman's bedroom; close-up photograph", "soft rim light | film grain",
         "green eyes • long whiskers"]
    )
    kept = ["young woman's bedroom", "soft rim light", "film grain", "green eyes", "long whiskers"]
    assert screened.kept == kept
    assert [(d.phrase, d.reason) for d in screened.dropped] == [("close-up photograph", ECHOES_PROMPT)]


def test_near_duplicates_meet_across_derivational_suffixes_and_spellings():
    assert phrase_family_key("Surrealistic artist") == phrase_family_key("Surrealist artist")
    assert phrase_family_key("geometrical shapes") == phrase_family_key("geometric shape")
    assert phrase_family_key("colour palette") == phrase_family_key("color palette")
    assert phrase_family_key("red hat") == phrase_family_key("red hats")
    # Genuinely different phrases stay apart.
    assert phrase_family_key("oil painting") != phrase_family_key("oil painter")
    assert phrase_family_key("textured wall") != phrase_family_key("texture wall")
    assert phrase_family_key("four cats") != phrase_family_key("for cats")
    assert phrase_family_key("surrealism") != phrase_family_key("surrealist")
    screened = _screen("a cat").screen(["Surrealistic artist", "Surrealist artist"])
    assert screened.kept == ["Surrealistic artist"]
    assert [d.reason for d in screened.dropped] == [NEAR_DUPLICATE]
