"""A person's reply in a session, and how a line typed at the terminal becomes one.

The session graph pauses after every regenerated image and resumes with one `HumanTurn`
(`Command(resume=turn.model_dump())`): carry on (for one or several iterations), stop, give feedback
the next proposal must address first, replace the prompt, pin / unpin / ban phrases, or refine the
best prompt with an inversion tool.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, Field, model_validator

from arpo.core.errors import InvalidInputError
from arpo.core.run_config import REFINE_TOOLS, RefineTool

TurnAction = Literal["continue", "stop", "feedback", "edit", "pin", "unpin", "ban", "refine"]

REPLY_HELP = """\
  <Enter> or c          carry on for one iteration
  run N                 carry on for N iterations without asking
  stop (or q)           finish the session with the best prompt so far
  edit NEW PROMPT       replace the current prompt (pinned phrases stay)
  pin PHRASE[, ...]     keep these phrases in the prompt, whatever happens
  unpin PHRASE[, ...]   release pinned phrases
  ban PHRASE[, ...]     never propose or keep these phrases again
  refine TOOL           refine the best prompt now with ph2p, editor or regressor
  anything else         feedback for the next proposal ("the sky should be stormier")"""


class HumanTurn(BaseModel):
    """One reply to the session's question "how should the loop go on?"."""

    action: TurnAction
    text: str | None = None
    """Feedback in plain language (feedback) or the replacement prompt (edit)."""
    phrases: list[str] = Field(default_factory=list)
    """Phrases to pin, unpin or ban."""
    iterations: int = Field(1, ge=1, le=100)
    """How many iterations to run before asking again (continue and feedback)."""
    tool: RefineTool | None = None
    """The refinement tool (refine)."""

    @model_validator(mode="after")
    def _has_what_its_action_needs(self) -> "HumanTurn":
        self.phrases = [p.strip() for p in self.phrases if p.strip()]
        if self.text is not None:
            self.text = self.text.strip()
        if self.action in ("feedback", "edit") and not self.text:
            raise ValueError(f"a {self.action} turn needs text")
        if self.action in ("pin", "unpin", "ban") and not self.phrases:
            raise ValueError(f"a {self.action} turn needs at least one phrase")
        if self.action == "refine" and self.tool is None:
            raise ValueError("a refine turn needs its tool")
        return self


_KEYWORDS = {"c": "continue", "continue": "continue", "": "continue", "stop": "stop", "q": "stop", "quit": "stop"}


def parse_reply(line: str) -> HumanTurn:
    """Read what a person typed at the session prompt; anything that is not a command is feedback."""
    stripped = line.strip()
    word, _, rest = stripped.partition(" ")
    keyword = word.lower()
    if stripped.lower() in _KEYWORDS:
        return HumanTurn(action=_KEYWORDS[stripped.lower()])
    if keyword == "run":
        return HumanTurn(action="continue", iterations=_iteration_count(rest))
    if keyword == "edit":
        return _turn("edit", text=rest)
    if keyword in ("pin", "unpin", "ban"):
        return _turn(keyword, phrases=split_phrases(rest))
    if keyword == "refine":
        tool = rest.strip().lower()
        if tool not in REFINE_TOOLS:
            raise InvalidInputError(f"'refine' needs a tool: {', '.join(REFINE_TOOLS)}, not {tool or 'nothing'!r}")
        return HumanTurn(action="refine", tool=tool)
    return HumanTurn(action="feedback", text=stripped)


def split_phrases(text: str) -> list[str]:
    """Phrases a person listed, separated by commas or semicolons, blanks dropped."""
    return [phrase.strip() for phrase in re.split(r"[,;]", text or "") if phrase.strip()]


def _iteration_count(text: str) -> int:
    try:
        count = int(text.strip())
    except ValueError:
        raise InvalidInputError(f"'run' needs a number of iterations, not {text.strip()!r}") from None
    if not 1 <= count <= 100:
        raise InvalidInputError(f"'run' takes 1 to 100 iterations, not {count}")
    return count


def _turn(action: TurnAction, **fields: object) -> HumanTurn:
    try:
        return HumanTurn(action=action, **fields)
    except ValueError:
        needs = "a new prompt" if action == "edit" else "one or more phrases, separated by commas"
        raise InvalidInputError(f"'{action}' needs {needs}") from None


EDIT_COMMANDS = ("parts", "render", "replace")


class EditRequest(BaseModel):
    """A request about the recovered prompt that is not a reply to the loop: show its parts, or
    render it with one part replaced or a word swapped (works at any pause and after the end)."""

    action: Literal["parts", "render", "replace"]
    content: str | None = None
    style: str | None = None
    old: str | None = None
    new: str | None = None


def parse_edit_request(line: str) -> EditRequest | None:
    """Read `parts`, `render content: TEXT`, `render style: TEXT` or `replace OLD NEW`; None when the
    line is none of these, InvalidInputError when it is one but malformed."""
    command, _, rest = line.strip().partition(" ")
    command = command.lower()
    if command == "parts":
        return EditRequest(action="parts")
    if command == "render":
        part, _, text = rest.partition(":")
        part = part.strip().lower()
        if part not in ("content", "style") or not text.strip():
            raise InvalidInputError("render needs 'content: TEXT' or 'style: TEXT'")
        return EditRequest(action="render", **{part: text.strip()})
    if command == "replace":
        words = rest.split()
        if len(words) != 2:
            raise InvalidInputError("replace needs two words: replace OLD NEW")
        return EditRequest(action="replace", old=words[0], new=words[1])
    return None
