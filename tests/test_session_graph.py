"""Sessions through the driver: pauses, every kind of reply, the history they leave, and resuming
from a fresh process's view of the same database. Tiny models; the scripted brain over real HTTP."""

from __future__ import annotations

import json

import pytest
from fixtures_brain import brain_server  # noqa: F401  (fixture)

from arpo import SAMPLE_IMAGE
from scripted_server import BrainServer, ScriptedBrain
from arpo.core.errors import InvalidInputError
from arpo.core.run_config import BrainChoice, RunConfig
from arpo.graphs.human_turn import HumanTurn
from arpo.graphs.session_driver import SessionDriver
from arpo.storage.history import History
from arpo.tools.model_stack import build_model_stack
from arpo.tools.reference_image import load_reference_image


@pytest.fixture(scope="module")
def tiny_models():
    return build_model_stack("tiny")


def _config(server: BrainServer | None = None, **fields) -> RunConfig:
    if server is None:
        return RunConfig(models="tiny", refine="none", steps=10, **fields)
    brain = BrainChoice(provider="vllm", base_url=server.base_url, model="scripted")
    return RunConfig(models="tiny", refine="none", vlm=brain, llm=brain, steps=10, **fields)


def _start(driver: SessionDriver, config: RunConfig):
    return driver.start(load_reference_image(SAMPLE_IMAGE), config)


def _proposal_bodies(server: BrainServer) -> list[str]:
    return [json.dumps(request.body) for request in server.requests if request.kind == "phrases"]


def test_a_session_pauses_after_the_first_image_and_shows_what_a_person_needs(tiny_models):
    driver = SessionDriver(History.open(None), tiny_models)
    view = _start(driver, _config(initial_prompt="a cat"))
    pause = view.pause
    assert pause["iteration"] == 0 and pause["prompt"] == "a cat"
    assert pause["candidates"] == [] and pause["best_prompt"] == "a cat"
    assert driver.history.has_image(pause["generated_sha256"])
    assert view.detail.status == "paused" and view.detail.kind == "session"


def test_feedback_reaches_the_next_proposal_first_and_is_kept_with_what_was_shown(tiny_models, brain_server):  # noqa: F811
    driver = SessionDriver(History.open(None), tiny_models)
    view = _start(driver, _config(brain_server, initial_prompt="a cat"))
    view = driver.reply(view.run_id, HumanTurn(action="feedback", text="the sky should be stormier"))

    bodies = _proposal_bodies(brain_server)
    assert len(bodies) == 1 and "the sky should be stormier" in bodies[0]
    assert view.pause["candidates"], "the round's candidates are shown, kept or not"
    # Tiny random CLIP decides whether any phrase helped; either way the person is asked again.
    assert view.pause["iteration"] == 1 or view.pause["notice"] == "no candidate raised CLIP similarity", view.pause
    turn = driver.history.session_turns(view.run_id)[0]
    assert (turn.action, turn.text, turn.iteration_index) == ("feedback", "the sky should be stormier", 0)
    assert turn.shown["prompt"] == "a cat"

    driver.reply(view.run_id, HumanTurn(action="continue"))
    assert "stormier" not in _proposal_bodies(brain_server)[1], "feedback is addressed once, then dropped"


def test_banned_phrases_are_never_candidates_even_when_the_llm_repeats_them(tiny_models):
    brain = ScriptedBrain(phrase_pool=["soft focus", "golden light", "oil on canvas"], phrases_per_reply=3)
    with BrainServer(brain) as server:
        driver = SessionDriver(History.open(None), tiny_models)
        view = _start(driver, _config(server, initial_prompt="a cat"))
        view = driver.reply(view.run_id, HumanTurn(action="ban", phrases=["Soft Focus"]))
        assert view.pause["iteration"] == 0 and view.pause["banned"] == ["Soft Focus"], "a ban asks again"
        view = driver.reply(view.run_id, HumanTurn(action="continue"))
    candidates = [c["phrase"] for c in view.pause["candidates"]]
    assert candidates and "soft focus" not in [c.lower() for c in candidates]
    assert "soft focus" not in view.pause["prompt"].lower()


def test_an_edit_replaces_the_prompt_and_pinned_phrases_survive_it(tiny_models):
    driver = SessionDriver(History.open(None), tiny_models)
    view = _start(driver, _config(initial_prompt="a cat"))
    view = driver.reply(view.run_id, HumanTurn(action="pin", phrases=["red sofa"]))
    assert view.pause["iteration"] == 1 and view.pause["prompt"] == "a cat, red sofa", "pinning adds and renders"

    view = driver.reply(view.run_id, HumanTurn(action="edit", text="a dog in the snow"))
    assert view.pause["iteration"] == 2 and view.pause["prompt"] == "a dog in the snow, red sofa"

    view = driver.reply(view.run_id, HumanTurn(action="unpin", phrases=["red sofa"]))
    view = driver.reply(view.run_id, HumanTurn(action="edit", text="a dog in the snow"))
    assert view.pause["prompt"] == "a dog in the snow"
    iterations = driver.history.iterations(view.run_id)
    assert [r.prompt for r in iterations] == ["a cat", "a cat, red sofa", "a dog in the snow, red sofa", "a dog in the snow"]


def test_run_n_goes_on_unattended_and_stop_finishes_with_the_best_prompt(tiny_models):
    driver = SessionDriver(History.open(None), tiny_models)
    view = _start(driver, _config(initial_prompt="a cat"))
    view = driver.reply(view.run_id, HumanTurn(action="continue", iterations=3))
    paused_at = view.pause["iteration"]
    assert paused_at == 3 or view.pause["notice"], "it asks again after 3 iterations, or sooner with a reason"
    assert len(driver.history.session_turns(view.run_id)) == 1, "no question was asked in between"

    view = driver.reply(view.run_id, HumanTurn(action="stop"))
    assert view.finished and view.pause is None
    best = max(driver.history.iterations(view.run_id), key=lambda r: r.clip_i)
    assert view.detail.best_prompt == best.prompt and view.detail.stopped_because == "stopped by the person"
    with pytest.raises(InvalidInputError, match="not waiting"):
        driver.reply(view.run_id, HumanTurn(action="continue"))


def test_a_session_resumes_from_another_process_with_its_transcript(tiny_models):
    first = SessionDriver(History.open(None), tiny_models)
    view = _start(first, _config(initial_prompt="a cat"))
    first.reply(view.run_id, HumanTurn(action="edit", text="a cat on a mat"))
    first.history.close()

    later = SessionDriver(History.open(None), tiny_models)  # as a new process would see it
    resumed = later.resume(view.run_id[:6])
    assert resumed.pause["iteration"] == 1 and resumed.pause["prompt"] == "a cat on a mat"
    assert [t.action for t in resumed.turns] == ["edit"]
    done = later.reply(resumed.run_id, HumanTurn(action="stop"))
    assert done.finished


def test_renders_edit_content_style_or_a_word_with_the_run_seed_and_are_kept(tiny_models):
    driver = SessionDriver(History.open(None), tiny_models)
    view = _start(driver, _config(initial_prompt="a dog on a beach, oil painting, warm lighting", seed=7))
    parts = driver.prompt_parts(view.run_id)
    assert (parts.content, parts.style) == ("a dog on a beach", "oil painting, warm lighting")

    by_word = driver.render_edit(view.run_id, replace=("dog", "cat"))
    by_style = driver.render_edit(view.run_id, style="pencil sketch")
    assert by_word.prompt == "a cat on a beach, oil painting, warm lighting" and by_word.seed == 7
    assert by_style.prompt == "a dog on a beach, pencil sketch"
    renders = driver.history.renders(view.run_id)
    assert [r.prompt for r in renders] == [by_word.prompt, by_style.prompt]
    same_prompt = driver.models.text_to_image.generate(by_word.prompt, 7)
    assert driver.history.store_image(same_prompt, role="render").sha256 == by_word.image_sha256


def test_a_run_that_is_not_a_session_cannot_be_driven_as_one(tiny_models):
    from arpo.graphs.invocation import build_context, start_run

    history = History.open(None)
    context = build_context(_config(), history, tiny_models)
    handle = start_run(history, _config(), load_reference_image(SAMPLE_IMAGE), context)
    with pytest.raises(InvalidInputError, match="not a session"):
        SessionDriver(history, tiny_models).resume(handle.run_id)
