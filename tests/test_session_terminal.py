"""`arpo session` at the terminal: typed replies, leaving and resuming by id, edits after the end,
and one-line errors for bad use."""

from __future__ import annotations

import io

import pytest
from cli_harness import SAMPLE_IMAGE, run_arpo

from arpo.core.errors import InvalidInputError
from arpo.graphs.human_turn import HumanTurn, parse_reply
from arpo.storage.history import History


def _typed(monkeypatch, *lines: str) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("".join(line + "\n" for line in lines)))


def _session(capsys, *args: str):
    return run_arpo(capsys, "session", *args)


def test_a_terminal_session_can_be_left_and_resumed_by_id(capsys, monkeypatch):
    _typed(monkeypatch, "edit a cat on a mat")  # then the input ends: the person leaves
    first = _session(capsys, SAMPLE_IMAGE, "--models", "tiny", "--brain", "offline", "--init-prompt", "a cat")
    assert first.exit_code == 0, first.stderr
    assert "iteration 0" in first.stdout and "prompt: a cat on a mat" in first.stdout
    run_id = first.stdout.split("left session ")[1].split(";")[0]

    _typed(monkeypatch, "pin red sofa", "stop", "replace cat dog", "")
    later = _session(capsys, "--resume", run_id)
    assert later.exit_code == 0, later.stderr
    assert "prompt: a cat on a mat, red sofa" in later.stdout
    assert "you: edit: a cat on a mat" in later.stderr, "resuming shows the transcript so far"
    assert f"session {run_id} finished: stopped by the person" in later.stdout
    assert "rendered (seed 0): a dog on a mat, red sofa" in later.stdout

    history = History.open(None)
    assert [t.action for t in history.session_turns(run_id)] == ["edit", "pin", "stop"]
    assert [r.prompt for r in history.renders(run_id)] == ["a dog on a mat, red sofa"]


def test_bad_session_use_is_one_line_and_exit_2(capsys, monkeypatch):
    _typed(monkeypatch)
    both = _session(capsys, SAMPLE_IMAGE, "--resume", "abc")
    neither = _session(capsys)
    unknown = _session(capsys, "--resume", "ffffffffffff")
    for outcome in (both, neither, unknown):
        assert outcome.exit_code == 2 and outcome.stderr.count("\n") == 1, outcome.stderr
    assert "either an IMAGE" in both.stderr


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("", HumanTurn(action="continue")),
        ("C", HumanTurn(action="continue")),
        ("run 4", HumanTurn(action="continue", iterations=4)),
        ("q", HumanTurn(action="stop")),
        ("edit a red barn, at dusk", HumanTurn(action="edit", text="a red barn, at dusk")),
        ("pin oil painting, dusk ;  fog", HumanTurn(action="pin", phrases=["oil painting", "dusk", "fog"])),
        ("ban blurry", HumanTurn(action="ban", phrases=["blurry"])),
        ("it is a watercolour", HumanTurn(action="feedback", text="it is a watercolour")),
        ("running late is fine", HumanTurn(action="feedback", text="running late is fine")),
    ],
)
def test_typed_replies_become_turns(line, expected):
    assert parse_reply(line) == expected


@pytest.mark.parametrize(("line", "problem"), [("run x", "number"), ("run 0", "1 to 100"), ("edit", "new prompt"), ("pin ,", "phrases")])
def test_malformed_commands_say_what_they_need(line, problem):
    with pytest.raises(InvalidInputError, match=problem):
        parse_reply(line)
