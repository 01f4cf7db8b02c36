"""The web UI's handlers called directly: every control with empty, wrong and out-of-range values
answers one line in the page, typed replies mean what they mean at the terminal, the candidate table
and status describe the round shown, and a run exports as JSON and a zip of its images.

One tiny offline session is shared by the module (the models load once); tests that end it start
their own.
"""

from __future__ import annotations

import json
import zipfile

import pytest

from arpo import SAMPLE_IMAGE
from arpo.app.web_ui import MODEL_CHOICES, UiDefaults, build_ui
from arpo.app.web_ui_handlers import SessionHandlers, StartForm
from arpo.app.web_ui_history import HistoryHandlers, run_table
from arpo.app.web_ui_view import SCORE_HEADER, Screen, score_plot
from arpo.graphs.human_turn import parse_reply
from arpo.graphs.session_driver import SessionDriver
from arpo.storage.history import History

FORM = dict(image=str(SAMPLE_IMAGE), models="tiny", brain="offline", framework="vanilla", seed=0)


def _form(**changes) -> list:
    values = {**FORM, **changes}
    return [values.get(name) for name in StartForm.__dataclass_fields__]


def _last(screens) -> Screen:
    return list(screens)[-1]


@pytest.fixture(scope="module")
def ui(tmp_path_factory):
    history = History.open(f"sqlite:///{tmp_path_factory.mktemp('ui')}/arpo.db")
    driver = SessionDriver(history)
    # A module's fixture is made before each test's settings (conftest's arpo_home), so it reads them
    # under the same values; with the default refine (auto) every round that kept nothing ran PH2P
    # (~20 s a test).
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ARPO_HOME", str(tmp_path_factory.mktemp("arpo-home")))
        patch.setenv("ARPO_REFINE", "none")
        defaults = UiDefaults.of(models="tiny", brain="offline")
    handlers = SessionHandlers(driver, defaults)
    yield handlers, HistoryHandlers(driver), history
    history.close()


def _start(handlers: SessionHandlers) -> str:
    screen = _last(handlers.start(*_form()))
    assert "iteration 0" in screen.status, screen.status
    return screen.run_id


@pytest.fixture(scope="module")
def session_id(ui):
    return _start(ui[0])


def _one_line(screen: Screen) -> str:
    status = screen.status
    assert isinstance(status, str) and status.strip(), f"no line for the person: {status!r}"
    assert "\n" not in status and "Traceback" not in status, status
    return status


NO_SESSION = [None, "", "   ", 42, {"__type__": "update"}, "ffffffffffff"]


@pytest.mark.parametrize("run_id", NO_SESSION)
@pytest.mark.parametrize(
    "control",
    ["carry_on", "stop", "feedback", "typed-run", "run_several", "edit", "pin", "unpin", "ban", "show_round"],
)
def test_every_session_control_without_a_session_answers_one_line(ui, control, run_id):
    handlers = ui[0]
    calls = {
        "carry_on": lambda: handlers.carry_on(run_id),
        "stop": lambda: handlers.stop(run_id),
        "feedback": lambda: handlers.reply_text(run_id, "more fog"),
        "typed-run": lambda: handlers.reply_text(run_id, "run 2"),
        "run_several": lambda: handlers.run_several(run_id, 2),
        "edit": lambda: handlers.edit(run_id, "a cat"),
        "pin": lambda: handlers.pin(run_id, "fog"),
        "unpin": lambda: handlers.unpin(run_id, "fog"),
        "ban": lambda: handlers.ban(run_id, "fog"),
        "show_round": lambda: [handlers.show_round(run_id, 0)],
    }
    line = _one_line(_last(calls[control]()))
    assert "Start or resume" in line or "no run with id" in line


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"image": None}, "Upload a reference image"),
        ({"image": 7}, "Upload a reference image"),
        ({"image": "/nonexistent/cat.png"}, "Cannot start"),
        ({"models": ""}, "choose a model stack"),
        ({"models": None}, "choose a model stack"),
        ({"brain": "gpt"}, "brain must be one of"),
        ({"vlm_brain": "claude"}, "vlm brain must be one of"),
        ({"framework": "fancy"}, "framework must be"),
        ({"seed": -1}, "seed must be a whole number"),
        ({"seed": 1.5}, "seed must be a whole number"),
        ({"seed": "abc"}, "seed must be a whole number"),
        ({"seed": 2**40}, "seed must be a whole number"),
        ({"base_url": "localhost:8000"}, "must start with http"),
        ({"llm_base_url": "ftp://x"}, "must start with http"),
    ],
)
def test_the_start_form_refuses_bad_values_in_one_line(ui, changes, expected):
    line = _one_line(_last(ui[0].start(*_form(**changes))))
    assert expected in line


@pytest.mark.parametrize("count", [0, -3, None, "", 2.5, "ten", 101, float("nan")])
def test_unattended_iterations_out_of_range_run_nothing(ui, session_id, count):
    handlers, _, history = ui
    before = len(history.iterations(session_id))
    line = _one_line(_last(handlers.run_several(session_id, count)))
    assert "Iterations must be a whole number from 1 to 100" in line
    assert len(history.iterations(session_id)) == before


@pytest.mark.parametrize(
    ("control", "value", "expected"),
    [
        ("edit", "", "edited prompt is empty"),
        ("edit", None, "edited prompt is empty"),
        ("pin", " , ;", "phrases to pin"),
        ("unpin", "", "phrases to unpin"),
        ("ban", None, "phrases to ban"),
        ("unpin", "never pinned", "Not pinned: never pinned"),
        ("typed", "run 0", "1 to 100"),
        ("typed", "run lots", "number of iterations"),
        ("typed", "edit", "new prompt"),
        ("typed", "pin ,", "phrases"),
        ("round", 99, "Pick an iteration"),
        ("round", None, "Pick an iteration"),
        ("round", "x", "Pick an iteration"),
    ],
)
def test_session_controls_refuse_bad_values_in_one_line(ui, session_id, control, value, expected):
    handlers, _, history = ui
    turns = len(history.session_turns(session_id))
    calls = {
        "edit": lambda: handlers.edit(session_id, value), "pin": lambda: handlers.pin(session_id, value),
        "unpin": lambda: handlers.unpin(session_id, value), "ban": lambda: handlers.ban(session_id, value),
        "typed": lambda: handlers.reply_text(session_id, value), "round": lambda: [handlers.show_round(session_id, value)],
    }
    assert expected in _one_line(_last(calls[control]()))
    assert len(history.session_turns(session_id)) == turns, "a refused reply must not reach the session"


def test_resuming_an_unknown_or_empty_id_answers_one_line(ui):
    # Regression: an unknown id used to pass gr.skip() on as a run id (AttributeError in the page).
    handlers = ui[0]
    assert "no run with id ffffffffffff" in _one_line(_last(handlers.resume("ffffffffffff")))
    for empty in (None, "", "  ", 3):
        assert "Type a session id" in _one_line(_last(handlers.resume(empty)))


def test_typed_replies_mean_what_they_mean_at_the_terminal_and_are_confirmed(ui):
    handlers, _, history = ui
    run_id = _start(handlers)
    typed = ["it is a watercolour", "pin red sofa, fog", "unpin fog", "ban blurry", "edit a cat on a red sofa", "c", "run 2", "stop"]
    confirmations = [_last(handlers.reply_text(run_id, line)).status.split("\n\n")[0] for line in typed]
    stored = [(t.action, t.text, t.phrases or []) for t in history.session_turns(run_id)]
    assert stored == [(turn.action, turn.text, turn.phrases) for turn in map(parse_reply, typed)]
    assert confirmations[6] == "Understood: run 2 iterations without asking."
    assert confirmations[0].startswith("Understood as feedback: “it is a watercolour”")
    assert confirmations[1] == "Understood: pin red sofa, fog."
    assert confirmations[4].startswith("Understood: replace the prompt with “a cat on a red sofa”")
    assert confirmations[5] == "Understood: one more iteration."
    assert confirmations[7] == "Understood: stop and keep the best prompt."
    assert history.get_run(run_id).status == "finished"


def test_help_and_edit_commands_are_answered_without_a_reply(ui, session_id):
    handlers, _, history = ui
    turns = len(history.session_turns(session_id))
    assert "run N" in _last(handlers.reply_text(session_id, "help")).status
    assert "replace OLD NEW" in _last(handlers.reply_text(session_id, "help")).status
    renders = len(history.renders(session_id))
    rendered = _last(handlers.reply_text(session_id, "render style: pencil sketch"))
    assert "Rendered with seed 0" in _one_line(rendered) and "pencil sketch" in rendered.status
    assert len(rendered.renders) == renders + 1 == len(history.renders(session_id))
    swapped = _last(handlers.reply_text(session_id, "replace sculpture statue"))
    assert "Rendered with seed 0" in _one_line(swapped) and "replace 'sculpture' with 'statue'" in history.renders(session_id)[-1].edit
    assert "Content:" in _one_line(_last(handlers.reply_text(session_id, "parts")))
    for malformed, problem in (("render pencil", "render needs"), ("replace cat", "two words")):
        assert problem in _one_line(_last(handlers.reply_text(session_id, malformed)))
    assert "Start or resume" in _one_line(_last(handlers.reply_text(None, "parts")))
    assert len(history.session_turns(session_id)) == turns, "edit commands are not replies to the loop"


def test_continue_after_stop_says_the_session_is_finished(ui):
    handlers = ui[0]
    run_id = _start(handlers)
    assert "finished" in _last(handlers.stop(run_id)).status
    for again in (handlers.carry_on(run_id), handlers.reply_text(run_id, "more fog"), handlers.stop(run_id)):
        line = _one_line(_last(again))
        assert "has finished (stopped by the person) and takes no more replies" in line


def test_the_candidate_table_describes_the_round_shown(ui):
    handlers, _, history = ui
    run_id = _start(handlers)
    first = _last(handlers.carry_on(run_id))
    assert "iteration 1" in first.status
    records = history.iterations(run_id)
    assert list(first.candidates["phrase"]) == [c.phrase for c in records[0].candidates]
    assert SCORE_HEADER in first.candidates.columns and "as it stood when that phrase was tried" in first.candidates_note

    edited = _last(handlers.edit(run_id, "a cat on a red sofa"))
    assert "iteration 2" in edited.status
    assert edited.candidates.empty, "an edited prompt had no round: the previous round must not linger"
    assert "your edited prompt" in edited.candidates_note

    back = handlers.show_round(run_id, 1)
    assert back.status.startswith("Showing iteration 1") and "pick iteration 2" in back.status
    assert list(back.candidates["phrase"]) == [c.phrase for c in records[0].candidates]
    assert back.round.value == 1 and [value for _, value in back.round.choices] == [0, 1, 2]
    assert back.edited_prompt == history.iterations(run_id)[1].prompt
    assert handlers.show_round(run_id, 0).candidates.empty


def test_an_unattended_run_says_how_many_it_ran_and_why_it_stopped(ui):
    handlers, _, history = ui
    run_id = _start(handlers)
    screen = _last(handlers.run_several(run_id, 10))
    first = screen.status.split("\n\n")[1]
    ran = history.iterations(run_id)[-1].index
    if ran < 10:
        assert first.startswith(f"Stopped after {ran} of 10 iterations because "), first
        assert len(first) > len(f"Stopped after {ran} of 10 iterations because ") + 3
    else:
        assert first == "Ran 10 of 10 iterations."


def test_the_plot_starts_at_iteration_0_with_whole_number_ticks(ui, session_id):
    records = ui[2].iterations(session_id)
    axes = score_plot(records[:1]).axes[0]
    assert [list(line.get_xdata()) for line in axes.lines[:2]] == [[0], [0]]
    assert axes.lines[0].get_marker() == "o", "one iteration must still be a visible point"
    ticks = [tick for tick in axes.get_xticks() if axes.get_xlim()[0] <= tick <= axes.get_xlim()[1]]
    assert ticks and all(float(tick).is_integer() for tick in ticks), ticks


def test_the_model_menu_offers_every_tiny_family():
    from arpo.tools.text_to_image import TINY_PRESETS

    assert set(TINY_PRESETS) <= set(MODEL_CHOICES)


def test_history_lists_filters_opens_and_exports_runs(ui, session_id):
    handlers, stored, history = ui
    table = run_table(history)
    assert session_id in set(table["id"]) and {"session"} <= set(table["kind"])
    assert list(run_table(history, session_id)["id"]) == [session_id]
    assert run_table(history, "no-such-words-anywhere").empty

    paused = table[table["id"] == session_id].iloc[0]
    assert paused["status"] == "paused" and paused["best CLIP-I"] is not None and paused["best prompt"], \
        "a paused session shows its best score and prompt so far"
    summary, reference, gallery, iterations, json_path, zip_path = stored.open_run(session_id)
    assert session_id in summary and reference is not None
    assert len(gallery) == len(history.iterations(session_id)) == len(iterations)
    exported = json.loads(open(json_path).read())
    assert exported["run"]["id"] == session_id and exported["run"]["iterations_detail"]
    with zipfile.ZipFile(zip_path) as archive:
        names = archive.namelist()
    assert "reference.png" in names and "iteration-000.png" in names and any(n.endswith(".json") for n in names)
    for bad in ("", None, "ffffffffffff"):
        assert stored.open_run(bad)[2] == []
    assert "no run with id" in stored.open_run("ffffffffffff")[0]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((None, "", "", "", ""), "Start or resume"),
        (("SESSION", "", "", "cat", "dog"), "Rendered with seed 0"),
        (("SESSION", "", "", "cat", ""), "one word"),
        (("SESSION", "", "", "", "dog"), "word to replace"),
        (("SESSION", "", "", "two words", "dog"), "one word"),
        (("ffffffffffff", "a cat", "", "", ""), "no run with id"),
    ],
)
def test_the_render_tab_checks_its_boxes(ui, session_id, args, expected):
    run_id = session_id if args[0] == "SESSION" else args[0]
    status, _ = ui[1].render(run_id, *args[1:])
    assert expected in status
    assert ui[1].parts(None)[2] == "Start or resume a session first."


def test_the_page_config_holds_no_api_key(ui, monkeypatch):
    secret = "sk-test-SECRET-should-never-reach-a-browser"
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    monkeypatch.setenv("VLLM_API_KEY", secret)
    app = build_ui(ui[2], UiDefaults.of(models="tiny", brain="openai"))
    config = json.dumps(app.get_config_file(), default=str)
    assert secret not in config and "API_KEY" not in config
    assert "tiny-pixart" in config, "the config is the page's real one (it lists the model menu)"


def test_a_missing_key_names_the_brain_menu_not_command_line_flags(ui, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    line = _one_line(_last(ui[0].start(*_form(brain="openai"))))
    assert "OPENAI_API_KEY is not set" in line and "Brain: offline" in line and "--brain" not in line, line


def test_the_session_tab_exports_the_run(ui, session_id):
    from arpo.app.web_ui_history import export_files

    files, line = export_files(ui[2], session_id)
    assert [f.rsplit(".", 1)[1] for f in files] == ["json", "zip"] and session_id in line
    for bad in (None, "", "ffffffffffff"):
        assert export_files(ui[2], bad)[1].startswith(("Start or resume", "**Cannot export:**"))


def test_progress_says_which_image_of_how_many_and_leaves_the_reference_alone(ui):
    handlers = ui[0]
    run_id = _start(handlers)
    screens = list(handlers.run_several(run_id, 2))
    working = [s.status for s in screens[:-1]]
    assert working and all(line.startswith(("Understood", "Working…")) for line in working)
    assert any("image 1 of 2" in line and "generating and scoring" in line for line in working), working
    assert all(s.reference == {"__type__": "update"} for s in screens), "progress must never replace the reference"


def test_long_events_hide_gradios_spinner_and_time_guess(ui):
    config = build_ui(ui[2], UiDefaults.of(models="tiny", brain="offline")).get_config_file()
    ids = {c["id"]: c["props"].get("elem_id") for c in config["components"]}
    triggers = {ids.get(d["targets"][0][0]): d["show_progress"] for d in config["dependencies"] if d["targets"]}
    for control in ("start", "continue", "run-several", "stop", "send-feedback", "feedback", "use-prompt", "resume"):
        assert triggers[control] == "hidden", control


def test_stop_during_an_unattended_run_pauses_it_after_the_image_being_made(ui):
    handlers, _, history = ui
    run_id = _start(handlers)
    answers = []
    for screen in handlers.run_several(run_id, 20):
        if not answers and screen.status.startswith("Working…"):
            answers = [_one_line(_last(handlers.stop(run_id)))]
        final = screen
    assert answers == ["Understood: pause after the image being made; then Stop again to finish, or reply."]
    assert final.status.split("\n\n")[1] == "Stopped after 1 of 20 iterations because you asked to pause."
    assert "waiting for your reply" in final.status
    assert [r.index for r in history.iterations(run_id)] == [0, 1]
    again = _last(handlers.carry_on(run_id))  # the request was used up: the next reply runs as asked
    assert "iteration 2" in again.status or "no candidate" in again.status
    assert "finished" in _last(handlers.stop(run_id)).status
