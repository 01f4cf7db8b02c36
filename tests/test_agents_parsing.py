"""Tolerant parsing of phrase lists and JSON objects out of model replies."""

from __future__ import annotations

import pytest
from scripted_server import malformed_phrase_text
from pydantic import BaseModel

from arpo.agents.reply_parsing import MalformedReplyError, parse_json_object, parse_phrase_list

PHRASES = ["golden hour light", "soft focus background", "van gogh's brushwork"]


@pytest.mark.parametrize(
    "shape", ["fenced", "python_list", "numbered", "bulleted", "prose", "semicolons", "commas"]
)
def test_every_scripted_malformed_shape_parses_to_the_phrases(shape):
    assert parse_phrase_list(malformed_phrase_text(shape, PHRASES)) == PHRASES


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ('{"phrases": ["rim light", "film grain"]}', ["rim light", "film grain"]),
        ('["rim light", "film grain"]', ["rim light", "film grain"]),
        ('{"candidates": ["rim light"]}', ["rim light"]),
        ('[{"phrase": "rim light"}, {"phrase": "film grain"}]', ["rim light", "film grain"]),
        ("```\n['rim light', 'film grain']\n```", ["rim light", "film grain"]),
        ('Okay. {"phrases": ["rim light", "film grain"]} Hope that helps!',
         ["rim light", "film grain"]),
        ("[stylized rendering of a cat, exaggerated large blue eyes]",
         ["stylized rendering of a cat", "exaggerated large blue eyes"]),
        ("1) rim light\n2) film grain\n3: misty street", ["rim light", "film grain", "misty street"]),
        ("1. **Lighting**: warm rim light\n2. **Texture** - film grain",
         ["warm rim light", "film grain"]),
        ("Here are some ideas:\n\n- \"rim light\"\n- 'film grain'.\n\nThese should work.",
         ["rim light", "film grain"]),
        ("Phrases: rim light; film grain; misty street", ["rim light", "film grain", "misty street"]),
        ("rim light\nfilm grain", ["rim light", "film grain"]),
        ("golden hour lighting", ["golden hour lighting"]),
    ],
)
def test_common_reply_shapes(reply, expected):
    assert parse_phrase_list(reply) == expected


def test_duplicates_are_dropped_case_insensitively_keeping_order():
    assert parse_phrase_list('["Rim Light", "film grain", "rim light", " FILM GRAIN. "]') == [
        "Rim Light", "film grain"]


def test_duplicates_can_be_kept_for_a_caller_that_counts_them():
    reply = '["Rim Light", "film grain", "rim light", " FILM GRAIN. "]'
    assert parse_phrase_list(reply, distinct=False) == ["Rim Light", "film grain", "rim light", "FILM GRAIN"]


def test_explicit_empty_list_means_nothing_to_add():
    assert parse_phrase_list('{"phrases": []}') == []
    assert parse_phrase_list("```json\n[]\n```") == []


@pytest.mark.parametrize(
    "reply",
    [
        "",
        "   \n ",
        "Sorry, I cannot help with that request.",
        "The main difference is that Image 1 is much warmer and has a more dramatic sky than Image 2.",
        "{}",
        "[1, 2, 3]",
    ],
)
def test_nothing_usable_raises(reply):
    with pytest.raises(MalformedReplyError):
        parse_phrase_list(reply)


def test_malformed_reply_error_is_a_value_error():
    assert issubclass(MalformedReplyError, ValueError)


class Verdict(BaseModel):
    closer: int
    reason: str


@pytest.mark.parametrize(
    "reply",
    [
        '{"closer": 2, "reason": "warmer light"}',
        'Sure.\n```json\n{"closer": 2, "reason": "warmer light"}\n```',
        'My answer is {"closer": 2, "reason": "warmer light"} based on the lighting.',
        '{"unrelated": true} then {"closer": 2, "reason": "warmer light"}',
    ],
)
def test_parse_json_object_finds_the_object(reply):
    assert parse_json_object(reply, Verdict) == Verdict(closer=2, reason="warmer light")


def test_parse_json_object_raises_when_absent():
    with pytest.raises(MalformedReplyError, match="no Verdict object"):
        parse_json_object('{"closer": "two"}', Verdict)


def test_markdown_emphasis_around_a_phrase_is_not_part_of_it():
    reply = "- *soft rim light*\n- _film grain_\n- **golden hour**"
    assert parse_phrase_list(reply) == ["soft rim light", "film grain", "golden hour"]
