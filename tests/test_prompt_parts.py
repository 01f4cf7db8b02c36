"""Content/style splitting of a recovered prompt, word replacement, and the LLM splitter's fallbacks."""

from __future__ import annotations

import pytest
from fake_brain import FakeBrain

from arpo.agents.prompt_splitter import PromptSplitter
from arpo.core.phrases import replace_words
from arpo.tools.prompt_parts import PromptParts, is_style_phrase, split_prompt


def test_split_sorts_phrases_by_bank_and_style_words_keeping_their_order():
    parts = split_prompt("a fox in the snow, impressionism, two pine trees, by claude monet, soft lighting")
    assert parts == PromptParts(content="a fox in the snow, two pine trees", style="impressionism, by claude monet, soft lighting")
    assert parts.compose() == "a fox in the snow, two pine trees, impressionism, by claude monet, soft lighting"


def test_a_prompt_made_only_of_style_still_has_content():
    parts = split_prompt("oil painting, soft lighting")
    assert parts.content == "oil painting" and parts.style == "soft lighting"


@pytest.mark.parametrize(("phrase", "is_style"), [("watercolor", True), ("cubism", True), ("a red barn", False), ("three dogs", False)])
def test_style_phrases(phrase, is_style):
    assert is_style_phrase(phrase) is is_style


def test_replace_words_swaps_whole_words_only_and_keeps_a_capital():
    assert replace_words("Dog and a dog, hotdog stand, dogs", "dog", "cat") == "Cat and a cat, hotdog stand, dogs"
    assert replace_words("a dog", "", "cat") == "a dog"


def test_llm_split_is_used_when_it_keeps_every_phrase():
    brain = FakeBrain().script("splitter", '{"content": "a fox, pine trees", "style": "ukiyo-e"}')
    parts = PromptSplitter(brain).split("a fox, ukiyo-e, pine trees")
    assert parts == PromptParts(content="a fox, pine trees", style="ukiyo-e")
    [call] = brain.sent
    assert call.schema_name == "prompt_parts" and "Prompt: a fox, ukiyo-e, pine trees" in call.text


@pytest.mark.parametrize(
    "reply",
    ["no idea", '{"content": "a sly fox", "style": "woodblock print"}'],
    ids=["malformed", "rewrote the phrases"],
)
def test_llm_split_falls_back_to_the_banks_when_the_reply_cannot_be_used(reply):
    brain = FakeBrain().script("splitter", reply)
    parts = PromptSplitter(brain).split("a fox, oil painting")
    assert parts == PromptParts(content="a fox", style="oil painting")
    [record] = brain.take_calls()
    assert not record.ok and "split by phrase banks" in record.error
