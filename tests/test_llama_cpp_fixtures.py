"""Replies captured from a real llama-cpp-python server (tests/fixtures/llama_cpp/, see its README),
replayed offline: the server's own 500 body for a json_schema request, and what a real small model
wrote for arpo's proposer prompt. The live counterpart is tests/test_real_llama_cpp.py (opt-in)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from scripted_server import BrainServer, ScriptedBrain, ScriptedReply
from fixtures_brain import scripted_backend

from arpo.agents import templates
from arpo.agents.image_parts import user_message
from arpo.agents.phrase_hygiene import (
    ECHOES_INSTRUCTIONS,
    ECHOES_PROMPT,
    FRAGMENT,
    NOT_WORDS,
    PhraseScreen,
)
from arpo.agents.proposal import ProposalRequest
from arpo.agents.reply_parsing import MalformedReplyError, parse_phrase_list

CAPTURES = {
    path.stem: json.loads(path.read_text())
    for path in sorted((Path(__file__).parent / "fixtures" / "llama_cpp").glob("*.json"))
}
PROPOSAL_ANSWERS = [
    pytest.param(answer, id=f"{capture}:{probe}")
    for capture, captured in CAPTURES.items()
    for probe, answer in captured["answers"].items()
    if "proposal_request" in answer
]


def _reply_text(answer: dict) -> str:
    return answer["body"]["choices"][0]["message"]["content"]


def _prompt_sent(answer: dict) -> str:
    """The proposer prompt the model saw (the template may have changed since the capture)."""
    return answer["request"]["messages"][0]["content"]


def test_the_captures_are_there():
    assert CAPTURES, "tests/fixtures/llama_cpp holds no capture"
    assert len(PROPOSAL_ANSWERS) >= 6


@pytest.mark.parametrize("capture", sorted(CAPTURES))
def test_the_real_json_schema_refusal_falls_back_to_json_object_and_is_quoted_in_one_line(capture):
    refusal = CAPTURES[capture]["answers"]["response_format_json_schema"]
    assert refusal["status"] == 500  # what the server really answered
    with BrainServer(ScriptedBrain()) as server:
        server.enqueue(ScriptedReply.status(500, refusal["body"]), ScriptedReply.phrases(["golden hour light"]))
        backend = scripted_backend(server, max_attempts=5)
        reply = backend.complete(
            [user_message("List phrases.")],
            role="proposer",
            json_schema=templates.CANDIDATE_PHRASES_SCHEMA,
            schema_name=templates.CANDIDATE_PHRASES_SCHEMA_NAME,
        )
        sent_formats = [(request.response_format or {}).get("type") for request in server.requests]
    assert reply.response_format == "json_object" and reply.attempts == 1
    assert sent_formats == ["json_schema", "json_object"], "a 500 naming the format is not retried as is"
    refused = backend.take_calls()[0]
    assert (refused.ok, refused.status_code) == (False, 500)
    assert "Input should be 'text' or 'json_object'" in refused.error
    # The server appends a traceback line with its own file paths; the recorded error stays one line.
    assert "\n" not in refused.error and "app.py" not in refused.error


@pytest.mark.parametrize("answer", PROPOSAL_ANSWERS)
def test_what_survives_a_real_small_models_proposal_is_a_short_new_phrase(answer):
    request = ProposalRequest(**answer["proposal_request"])
    try:
        raw = parse_phrase_list(_reply_text(answer), distinct=False)
    except MalformedReplyError:
        return  # nothing readable: the proposer repairs once, then falls back to the phrase banks
    screened = PhraseScreen(request, _prompt_sent(answer)).screen(raw)
    for phrase in screened.kept:
        words = phrase.split()
        assert request.min_words <= len(words) <= request.max_words, phrase
        assert "..." not in phrase and "," not in phrase, phrase
        assert phrase.casefold() not in request.current_prompt.casefold(), phrase
    assert len({phrase.casefold() for phrase in screened.kept}) == len(screened.kept)


def test_the_models_placeholder_json_never_becomes_a_candidate():
    """Constrained to the schema, Gemma 3 270M copies the template's own example: {"phrases": ["..."]}."""
    placeholder_replies = [
        answer for captured in CAPTURES.values() for probe, answer in captured["answers"].items()
        if probe.endswith("_json_object_schema")
    ]
    assert placeholder_replies
    for answer in placeholder_replies:
        assert '"..."' in _reply_text(answer)
        request = ProposalRequest(**answer["proposal_request"])
        try:
            raw = parse_phrase_list(_reply_text(answer), distinct=False)
        except MalformedReplyError:
            continue
        assert PhraseScreen(request, _prompt_sent(answer)).screen(raw).kept == []


GEMMA = "gemma-3-270m-q4_k_m-gemma"  # llama-cpp-python with --chat_format gemma


def _screened_capture(capture: str, probe: str):
    answer = CAPTURES[capture]["answers"][probe]
    request = ProposalRequest(**answer["proposal_request"])
    raw = parse_phrase_list(_reply_text(answer), distinct=False)
    screened = PhraseScreen(request, _prompt_sent(answer)).screen(raw)
    return screened, {d.phrase: d.reason for d in screened.dropped}


@pytest.mark.parametrize(
    "capture, probe, phrase, reason",
    [
        # The reply trails off repeating the template: "..., each describing what Image"
        (GEMMA, "proposal_first_round", "each describing what Image", ECHOES_INSTRUCTIONS),
        # Cyrillic glued to an English word by a glitching tokenizer.
        (GEMMA, "proposal_first_round", "тельнуюmodel", NOT_WORDS),
        # The model talking to the reader, cut off mid-sentence.
        (GEMMA, "proposal_first_round_json_object", "The cat in your picture is", FRAGMENT),
        # A chat-template control token the default chat format leaks.
        ("gemma-3-270m-q4_k_m-default", "proposal_first_round", "/INST", NOT_WORDS),
    ],
)
def test_a_real_small_models_leaks_are_dropped_with_their_reason(capture, probe, phrase, reason):
    screened, dropped = _screened_capture(capture, probe)
    assert phrase not in screened.kept
    assert dropped[phrase] == reason


def test_two_phrases_joined_by_a_semicolon_are_judged_one_by_one():
    """Gemma wrote "young woman's bedroom; close-up photograph" as one phrase; the second half is
    already in the prompt ("a cat, tabby fur, close-up photograph"), the first may be tried."""
    screened, dropped = _screened_capture(GEMMA, "proposal_later_round")
    assert not any(";" in phrase for phrase in screened.kept)
    assert "young woman's bedroom" in screened.kept
    assert dropped["close-up photograph"] == ECHOES_PROMPT
