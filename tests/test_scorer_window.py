"""Selection never keeps a phrase the scorer cannot see (PixArt's T5 reads 120 tokens, CLIP 77)."""

import pytest
from cli_harness import SAMPLE_IMAGE

from scripted_server import BrainServer, ScriptedBrain
from arpo.core.run_config import BrainChoice, RunConfig
from arpo.graphs.invocation import build_context, execute_run, start_run
from arpo.graphs.selection import ScorerWindow, greedy_select
from arpo.storage.history import History
from arpo.tools.model_stack import build_model_stack
from arpo.tools.reference_image import load_reference_image

WINDOW_REASON = "past the scorer's 77-token window"
# 24 x "blue sky" = 71 CLIP tokens (and as many T5 pieces): one more 2-word phrase fits CLIP's 75
# content tokens (74), a second does not (77), while PixArt's 119 would take several more.
NEAR_FULL = ", ".join(["blue sky"] * 24)


class WordCountingClip:
    """The tiny CLIP scorer, but text similarity is +1 per 'good' in the text it is given, so a test
    knows what an unlimited scorer would prefer."""

    def __init__(self, clip):
        self._clip = clip

    def __getattr__(self, name):
        return getattr(self._clip, name)

    def text_image_similarity(self, image_embedding, texts):
        return [float(text.count("good")) for text in texts]


@pytest.fixture(scope="module")
def pixart_stack(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ARPO_HOME", str(tmp_path_factory.mktemp("arpo-home")))
        return build_model_stack("tiny-pixart")


def test_the_scenario_is_past_clip_but_inside_t5(pixart_stack):
    t2i, clip = pixart_stack.text_to_image, pixart_stack.clip
    assert clip.count_tokens(NEAR_FULL) == 71
    two_more = NEAR_FULL + ", good light, good colour"
    assert clip.count_tokens(two_more) == 77 > clip.token_budget()
    assert t2i.count_tokens(two_more) <= t2i.token_budget()  # PixArt reads it all
    assert not clip.sees_all(two_more) and clip.sees_all(NEAR_FULL + ", good light")


def test_the_real_scorer_cannot_tell_candidates_past_its_window_apart(pixart_stack):
    """Why the rule exists: past CLIP's window every candidate gets the unchanged prompt's score."""
    clip = pixart_stack.clip
    full = NEAR_FULL + ", good light, blue sky"  # 77 tokens: the scorer reads up to "blue"
    image = clip.encode_images([load_reference_image(SAMPLE_IMAGE).image])[0]
    scores = clip.text_image_similarity(image, [full + suffix for suffix in (", a red fox", ", a castle", "")])
    assert scores[0] == pytest.approx(scores[1], abs=1e-6) == pytest.approx(scores[2], abs=1e-6)


def test_greedy_selection_refuses_candidates_past_the_scorer_window():
    window = ScorerWindow(fits=lambda prompt: len(prompt.split(", ")) <= 3, tokens=77)
    outcome = greedy_select(
        "a cat",
        ["good light", "good colour", "good mood"],
        score_prompts=lambda prompts: [float(p.count("good")) for p in prompts],
        scorer_window=window,
    )
    assert outcome.selected == ["good light", "good colour"]
    refused = [v for v in outcome.verdicts if v.phrase == "good mood"][0]
    assert (refused.selected, refused.score, refused.reason) == (False, None, WINDOW_REASON)
    assert outcome.past_scorer_window == ["good mood"] and outcome.over_budget == []


def test_over_budget_is_judged_before_the_scorer_window():
    outcome = greedy_select(
        "a cat",
        ["good light"],
        score_prompts=lambda prompts: [1.0] * len(prompts),
        fits_budget=lambda prompt: False,
        scorer_window=ScorerWindow(fits=lambda prompt: False, tokens=77),
    )
    assert outcome.verdicts[0].reason == "over budget" and outcome.past_scorer_window == []


def test_pixart_loop_keeps_no_phrase_the_scorer_could_not_see():
    stack = build_model_stack("tiny-pixart")
    stack.clip = WordCountingClip(stack.clip)
    history = History.open()
    with BrainServer(ScriptedBrain(phrase_pool=["good light", "good colour", "good mood"], phrases_per_reply=3)) as server:
        config = RunConfig(
            models="tiny-pixart",
            refine="none",
            vlm=BrainChoice(provider="vllm", base_url=server.base_url),
            llm=BrainChoice(provider="vllm", base_url=server.base_url),
            steps=1,
            initial_prompt=NEAR_FULL,
        )
        context = build_context(config, history, models=stack)
        handle = start_run(history, config, load_reference_image(SAMPLE_IMAGE), context)
        execute_run(handle)
    first = history.get_run(handle.run_id).iterations_detail[0]
    reasons = {c.phrase: c.reason for c in first.candidates}
    # An unlimited scorer would have taken all three (each adds a 'good'); CLIP sees only the first.
    assert first.selected == ["good light"]
    assert reasons == {"good light": "selected", "good colour": WINDOW_REASON, "good mood": WINDOW_REASON}
    assert "77-token window" in first.note
    final = history.get_run(handle.run_id).last_prompt
    assert stack.clip.sees_all(final) and final == NEAR_FULL + ", good light"


def test_a_prompt_that_fills_the_scorer_window_stops_the_loop_saying_so():
    stack = build_model_stack("tiny-pixart")
    stack.clip = WordCountingClip(stack.clip)
    history = History.open()
    with BrainServer(ScriptedBrain(phrase_pool=["good light", "good colour"], phrases_per_reply=2)) as server:
        config = RunConfig(
            models="tiny-pixart",
            refine="none",
            vlm=BrainChoice(provider="vllm", base_url=server.base_url),
            llm=BrainChoice(provider="vllm", base_url=server.base_url),
            steps=5,
            initial_prompt=NEAR_FULL + ", red fox, blue sea",  # 77 CLIP tokens, well inside T5's 119
        )
        context = build_context(config, history, models=stack)
        handle = start_run(history, config, load_reference_image(SAMPLE_IMAGE), context)
        execute_run(handle)
    run = history.get_run(handle.run_id)
    assert run.stopped_because == "the prompt fills the scorer's token window; no candidate it could see is left"
    assert [c.reason for c in run.iterations_detail[0].candidates] == [WINDOW_REASON, WINDOW_REASON]
