"""A session held at the terminal: show each pause, read the person's reply, render their edits.

Lines the person types become `HumanTurn`s (see `arpo.graphs.human_turn.REPLY_HELP`); three more
commands work at any pause and after the end: `parts` shows the best prompt as content and style,
`render content: ...` / `render style: ...` renders an edit of one part, and `replace OLD NEW` renders
the prompt with a word swapped everywhere. Leaving (end of input or Ctrl-C) keeps the session paused
in the history, to be picked up with `arpo session --resume ID`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TextIO

from arpo.app.reporting import print_progress
from arpo.core.errors import InvalidInputError
from arpo.graphs.human_turn import REPLY_HELP, parse_edit_request, parse_reply
from arpo.graphs.session_driver import SessionDriver, SessionView

EDIT_HELP = """\
  parts                 show the best prompt as content and style
  render content: TEXT  render the best prompt with its content part replaced
  render style: TEXT    render the best prompt with its style part replaced
  replace OLD NEW       render the best prompt with a word replaced everywhere
  help                  this list"""


class TerminalSession:
    """Drives one session from a text stream (stdin) to another (stdout)."""

    def __init__(self, driver: SessionDriver, read_line: Callable[[str], str], out: TextIO) -> None:
        self.driver = driver
        self.read_line = read_line
        self.out = out

    def converse(self, view: SessionView) -> SessionView:
        """Show pauses and pass replies on until the session finishes or the person leaves."""
        while view.pause is not None:
            self._show_pause(view)
            line = self._ask("> ")
            if line is None:
                self._say(f"left session {view.run_id}; resume with: arpo session --resume {view.run_id}")
                return view
            if self._handled_as_edit(view.run_id, line):
                continue
            try:
                turn = parse_reply(line)
            except InvalidInputError as problem:
                self._say(f"{problem} (type help for the commands)")
                continue
            view = self.driver.reply(view.run_id, turn, on_update=print_progress)
        self._show_end(view)
        self._offer_edits(view.run_id)
        return view

    def _offer_edits(self, run_id: str) -> None:
        self._say("edit the result? parts | render content: ... | render style: ... | replace OLD NEW (Enter to quit)")
        while True:
            line = self._ask("edit> ")
            if not line:
                return
            if not self._handled_as_edit(run_id, line):
                self._say("not an edit command; type help, or press Enter to quit")

    def _handled_as_edit(self, run_id: str, line: str) -> bool:
        if line.strip().partition(" ")[0].lower() in ("help", "?"):
            self._say(REPLY_HELP + "\n" + EDIT_HELP)
            return True
        try:
            request = parse_edit_request(line)  # shared with the web UI's reply box
        except InvalidInputError as problem:
            self._say(str(problem))
            return True
        if request is None:
            return False
        if request.action == "parts":
            parts = self.driver.prompt_parts(run_id)
            self._say(f"content: {parts.content}\nstyle:   {parts.style}")
        elif request.action == "render":
            self._show_render(self.driver.render_edit(run_id, content=request.content, style=request.style))
        else:
            self._show_render(self.driver.render_edit(run_id, replace=(request.old, request.new)))
        return True

    def _show_pause(self, view: SessionView) -> None:
        pause = view.pause or {}
        best = f"best CLIP-I {pause['best_clip_i']:.4f} at iteration {pause['best_iteration']}"
        self._say(f"\n── session {view.run_id} · iteration {pause['iteration']} · "
                  f"CLIP-I {pause['clip_i']:.4f} · CLIP-T {pause['clip_t']:.4f} · {best}")
        self._say(f"prompt: {pause['prompt']}")
        if pause["best_prompt"] != pause["prompt"]:
            self._say(f"best:   {pause['best_prompt']}")
        for candidate in pause["candidates"]:
            mark = "+" if candidate["selected"] else "-"
            score = f"{candidate['score']:.4f}" if candidate["score"] is not None else "  –   "
            self._say(f"  {mark} {score}  {candidate['phrase']}  ({candidate['reason']})")
        for label in ("pinned", "banned"):
            if pause[label]:
                self._say(f"{label}: {', '.join(pause[label])}")
        if pause.get("notice"):
            self._say(f"note: {pause['notice']}")
        self._say(f"image: {self.driver.history.image_path(pause['generated_sha256'])}")
        self._say("reply: Enter to go on, feedback in words, or help")

    def _show_end(self, view: SessionView) -> None:
        detail = view.detail
        self._say(f"\nsession {view.run_id} finished: {detail.stopped_because}")
        self._say(f"best prompt (CLIP-I {detail.best_clip_i or 0:.4f}): {detail.best_prompt}")

    def _show_render(self, render) -> None:
        path = self.driver.history.image_path(render.image_sha256)
        self._say(f"rendered (seed {render.seed}): {render.prompt}\nimage: {path}")

    def _ask(self, prompt: str) -> str | None:
        try:
            return self.read_line(prompt)
        except EOFError:
            return None

    def _say(self, text: str) -> None:
        print(text, file=self.out, flush=True)
