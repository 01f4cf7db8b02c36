"""Greedy selection (Algorithm 8) against cases computed by hand."""

import pytest

from arpo.core.phrases import join_prompt
from arpo.graphs.selection import greedy_select

# Each phrase adds a fixed amount to the score, so every round can be worked out on paper.
GAINS = {"a cat": 0.20, "soft light": 0.30, "oil painting": 0.10, "blurry": -0.05, "neutral": 0.0}


def additive_score(prompts: list[str]) -> list[float]:
    return [round(sum(GAINS[p.strip()] for p in prompt.split(",")), 6) for prompt in prompts]


def test_takes_best_first_keeps_ties_and_rejects_losses():
    outcome = greedy_select("a cat", ["oil painting", "blurry", "soft light", "neutral"], additive_score)
    # Round 1: soft light .50 (kept) | round 2: oil painting .60 (kept) | round 3: neutral .60 == s_max
    # (kept: Algorithm 8 keeps s >= s_max) | round 4: blurry .55 < .60 (dropped).
    assert outcome.selected == ["soft light", "oil painting", "neutral"]
    assert outcome.prompt == "a cat, soft light, oil painting, neutral"
    # Verdicts read in the order they were decided: the selected ones in the order they joined.
    assert [v.phrase for v in outcome.verdicts] == ["soft light", "oil painting", "neutral", "blurry"]
    verdicts = {v.phrase: v for v in outcome.verdicts}
    assert verdicts["blurry"].reason == "no gain" and not verdicts["blurry"].selected
    assert verdicts["blurry"].score == pytest.approx(0.55)
    assert verdicts["neutral"].score == pytest.approx(0.60)
    assert outcome.start_score == pytest.approx(0.20)
    assert outcome.best_score == pytest.approx(0.60)
    # One batched call for the start prompt, then one per round: k candidates -> k + 1 calls.
    assert outcome.scoring_calls == 5


def test_a_known_start_score_is_not_measured_again():
    scored: list[list[str]] = []

    def recording_score(prompts: list[str]) -> list[float]:
        scored.append(list(prompts))
        return additive_score(prompts)

    outcome = greedy_select("a cat", ["soft light", "blurry"], recording_score, start_score=0.20)
    assert "a cat" not in [prompt for batch in scored for prompt in batch]
    assert outcome.selected == ["soft light"] and outcome.start_score == pytest.approx(0.20)
    assert outcome.scoring_calls == len(scored) == 2  # one per round, none for the start prompt
    # The start score given is the bar a candidate must reach: a higher one turns "soft light" down.
    assert greedy_select("a cat", ["soft light"], additive_score, start_score=0.9).selected == []


def test_empty_selection_when_nothing_helps():
    outcome = greedy_select("a cat, soft light", ["blurry"], additive_score)
    assert outcome.selected == []
    assert outcome.prompt == "a cat, soft light"


def test_interaction_between_phrases_is_scored_on_the_whole_prompt():
    # Non-additive scores: "red" alone helps, but after "blue" is chosen it hurts.
    table = {
        "x": 0.1,
        "x, red": 0.3,
        "x, blue": 0.4,
        "x, blue, red": 0.2,
    }
    outcome = greedy_select("x", ["red", "blue"], lambda prompts: [table[p] for p in prompts])
    assert outcome.selected == ["blue"]
    red = next(v for v in outcome.verdicts if v.phrase == "red")
    assert red.score == pytest.approx(0.2) and red.reason == "no gain"


def test_duplicates_and_phrases_already_in_prompt_are_not_scored():
    calls = []

    def score(prompts):
        calls.append(list(prompts))
        return additive_score(prompts)

    outcome = greedy_select("a cat", ["A Cat.", "soft light", "soft  light", ""], score)
    assert outcome.selected == ["soft light"]
    reasons = [(v.phrase, v.reason) for v in outcome.verdicts]
    assert reasons == [("soft light", "selected"), ("A Cat", "duplicate"), ("soft light", "duplicate"), ("", "duplicate")]
    assert calls == [["a cat"], ["a cat, soft light"]]


def test_commas_inside_a_phrase_do_not_split_the_prompt():
    outcome = greedy_select("a cat", ["soft, light"], lambda prompts: [1.0 for _ in prompts])
    assert outcome.selected == ["soft light"]


def test_over_budget_candidates_are_reported_not_silently_appended():
    def fits(prompt):  # a budget of four words
        return len(prompt.replace(",", " ").split()) <= 4

    outcome = greedy_select("a cat", ["soft light", "oil painting", "neutral"], additive_score, fits)
    # soft light (4 words) is taken first; then both others would make 5-6 words.
    assert outcome.selected == ["soft light"]
    assert sorted(outcome.over_budget) == ["neutral", "oil painting"]
    assert all(fits(p) for p in [outcome.prompt])


def test_join_prompt_skips_empty_parts():
    assert join_prompt("", ["a", "b"]) == "a, b"
    assert join_prompt("a cat,", []) == "a cat"
