"""The session tab's event handlers: every control's input is checked here and answered in one line.

Each handler yields `Screen`s: progress lines while the session works, then the round it stopped at.
Replies typed in the feedback box go through the terminal's parser (`parse_reply`), so `edit ...`,
`run N`, `pin ...`, `unpin ...`, `ban ...`, `stop` and `c` mean the same in both places, and the
page says what it understood before the work starts.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import gradio as gr

from arpo.app.reporting import progress_line
from arpo.app.session_terminal import EDIT_HELP
from arpo.app.web_ui_view import Screen, candidate_frame, prompt_html, round_candidates, score_plot, scores_text
from arpo.core.errors import ArpoError, InvalidInputError
from arpo.core.run_config import BRAIN_PROVIDERS, FRAMEWORKS
from arpo.core.settings import OPTION_GROUPS, ArpoSettings, BrainOptions, LoopOptions, ModelOptions, OptionGroup
from arpo.graphs.human_turn import REPLY_HELP, EditRequest, HumanTurn, parse_edit_request, parse_reply, split_phrases
from arpo.graphs.session_driver import SessionDriver, SessionView

log = logging.getLogger(__name__)

MAX_UNATTENDED = 100
MAX_SEED = 2**32 - 1
NODE_WORDS = {
    "initialize": "captioning the reference", "generate": "generating and scoring the image",
    "compare": "comparing the images", "propose": "proposing phrases", "select": "choosing phrases",
    "review": "waiting for you", "finish": "finishing",
}


@dataclass
class UiDefaults:
    """What a session started in the page uses where the person leaves the start form as it is: the
    `arpo ui` flags (option groups) over the ARPO_* settings, merged as every command merges them."""

    settings: ArpoSettings = field(default_factory=ArpoSettings.read)
    chosen: tuple[OptionGroup, ...] = ()
    """The option groups of the `arpo ui` flags; the form's own choices go over them."""

    @classmethod
    def of(cls, settings: ArpoSettings | None = None, **flags: Any) -> UiDefaults:
        """Defaults from flags by name (models="tiny", brain="offline", steps=4, ...)."""
        groups = [group.chosen(**{name: value for name, value in flags.items() if name in group.model_fields})
                  for group in OPTION_GROUPS]
        unknown = set(flags) - {name for group in OPTION_GROUPS for name in group.model_fields}
        if unknown:
            raise TypeError(f"not flags of arpo ui: {', '.join(sorted(unknown))}")
        return cls(settings or ArpoSettings.read(), tuple(groups))

    def shown(self, name: str) -> Any:
        """What the start form shows in its field `name`: the flag, else the setting, else nothing ("")."""
        for group in reversed(self.chosen):
            value = getattr(group, name, None)
            if value is not None:
                return value
        value = getattr(self.settings, name, None)
        return "" if value is None else value


@dataclass
class StartForm:
    """The start form as the page sends it (every field may be None or of the wrong type)."""

    image: Any = None
    models: Any = None
    brain: Any = None
    vlm_brain: Any = None
    llm_brain: Any = None
    base_url: Any = None
    vlm_base_url: Any = None
    llm_base_url: Any = None
    vlm: Any = None
    llm: Any = None
    framework: Any = None
    seed: Any = None


class SessionHandlers:
    """Start, steer, browse and resume sessions from the page; one `SessionDriver` shared by all."""

    def __init__(self, driver: SessionDriver, defaults: UiDefaults) -> None:
        self.driver = driver
        self.defaults = defaults

    @property
    def history(self):
        return self.driver.history

    # Starting and resuming

    def start(self, *form_values: Any) -> Iterator[Screen]:
        form = StartForm(*form_values)
        if not form.image or not isinstance(form.image, str):
            yield Screen(status="Upload a reference image first.")
            return
        from arpo.tools.reference_image import load_reference_image

        try:
            config = self.config(form)
            reference = load_reference_image(form.image)
        except ArpoError as problem:
            yield Screen(status=f"**Cannot start:** {_menu_words(str(problem))}")
            return
        yield Screen(status="Working… loading the models and captioning the reference (the first start takes longest)")
        yield from self._work(lambda progress: self.driver.start(reference, config, on_update=progress))

    def resume(self, session_id: Any) -> Iterator[Screen]:
        session_id = _text(session_id)
        if not session_id:
            yield Screen(status="Type a session id, or pick a row in the History tab.")
            return
        try:
            detail = self.history.get_run(session_id)
        except ArpoError as problem:
            yield Screen(status=f"**Cannot resume:** {problem}")
            return
        if detail.kind != "session":
            yield Screen(status=f"Run `{detail.id}` is a {detail.kind} run, not a session; "
                                f"browse it in the History tab (or finish it with `arpo resume {detail.id}`).")
            return
        reference = self.history.open_image(detail.reference_sha256)
        yield Screen(run_id=detail.id, reference=reference, status=f"Resuming session `{detail.id}`…")
        yield from self._work(lambda progress: self.driver.resume(detail.id, on_update=progress),
                              understood=f"Resumed session `{detail.id}`.")

    # Replies

    def reply_text(self, run_id: Any, text: Any) -> Iterator[Screen]:
        """The feedback box: a session reply exactly as the terminal reads it."""
        line = text if isinstance(text, str) else ""
        if line.strip().partition(" ")[0].lower() in ("help", "?"):
            yield Screen(status="Replies you can type:\n\n```\n" + REPLY_HELP + "\n" + EDIT_HELP + "\n```")
            return
        try:
            request = parse_edit_request(line)
            turn = parse_reply(line) if request is None else None
        except InvalidInputError as problem:
            yield Screen(status=f"{problem} (type help for the commands)")
            return
        if request is not None:
            yield self._edit_request(run_id, request)
            return
        yield from self._reply(run_id, turn)

    def _edit_request(self, run_id: Any, request: EditRequest) -> Screen:
        """`parts`, `render ...` and `replace ...` typed in the reply box, as at the terminal; renders
        join the Edit and render tab's gallery."""
        run_id = _text(run_id)
        if not run_id:
            return Screen(status="Start or resume a session first.")
        try:
            if request.action == "parts":
                parts = self.driver.prompt_parts(run_id)
                return Screen(status=f"Understood: show the parts. Content: {parts.content} · Style: {parts.style}")
            replace = (request.old, request.new) if request.action == "replace" else None
            render = self.driver.render_edit(run_id, content=request.content, style=request.style, replace=replace)
        except ArpoError as problem:
            return Screen(status=f"**Cannot {request.action}:** {problem}")
        gallery = [(self.history.open_image(item.image_sha256), item.prompt) for item in self.history.renders(run_id)]
        return Screen(status=f"Understood: {request.action}. Rendered with seed {render.seed}: {render.prompt} "
                             "(in the Edit and render tab)", renders=gallery)

    def carry_on(self, run_id: Any) -> Iterator[Screen]:
        yield from self._reply(run_id, HumanTurn(action="continue"))

    def run_several(self, run_id: Any, iterations: Any) -> Iterator[Screen]:
        count = _whole_number(iterations)
        if count is None or not 1 <= count <= MAX_UNATTENDED:
            yield Screen(status=f"Iterations must be a whole number from 1 to {MAX_UNATTENDED}, not {_shown(iterations)}.")
            return
        yield from self._reply(run_id, HumanTurn(action="continue", iterations=count))

    def stop(self, run_id: Any) -> Iterator[Screen]:
        yield from self._reply(run_id, HumanTurn(action="stop"))

    def edit(self, run_id: Any, prompt: Any) -> Iterator[Screen]:
        if not _text(prompt):
            yield Screen(status="The edited prompt is empty; type the prompt to render.")
            return
        yield from self._reply(run_id, HumanTurn(action="edit", text=_text(prompt)))

    def pin(self, run_id: Any, phrases: Any) -> Iterator[Screen]:
        yield from self._phrases("pin", run_id, phrases)

    def unpin(self, run_id: Any, phrases: Any) -> Iterator[Screen]:
        yield from self._phrases("unpin", run_id, phrases)

    def ban(self, run_id: Any, phrases: Any) -> Iterator[Screen]:
        yield from self._phrases("ban", run_id, phrases)

    # Browsing rounds

    def show_round(self, run_id: Any, index: Any) -> Screen:
        """The round picked in the round list, with its own image, prompt, candidates and scores."""
        wanted = _whole_number(index)
        if not _text(run_id):
            return Screen(status="Start or resume a session first.")
        try:
            view = self.driver.view(_text(run_id))
        except ArpoError as problem:
            return Screen(status=f"**Cannot show it:** {problem}")
        indexes = [record.index for record in self.history.iterations(view.run_id)]
        if wanted is None or wanted not in indexes:
            span = f"{indexes[0]} to {indexes[-1]}" if indexes else "none yet"
            return Screen(status=f"Pick an iteration of this session ({span}), not {_shown(index)}.")
        return self.screen(view, wanted)

    # Building the screen

    def screen(self, view: SessionView, index: int | None = None, understood: str = "") -> Screen:
        """Everything the session tab shows for one round of `view` (the latest when `index` is None)."""
        records = {record.index: record for record in self.history.iterations(view.run_id)}
        pause, detail = view.pause, view.detail
        if not records:
            return Screen(run_id=view.run_id, status=_lines(understood, f"Session `{view.run_id}` has no iterations yet ({detail.status})."))
        latest = pause["iteration"] if pause else max(records)
        shown = index if index is not None else latest
        record = records[shown]
        candidates, note = round_candidates(records, view.turns, shown)
        previous = records.get(shown - 1)
        return Screen(
            run_id=view.run_id,
            status=_lines(understood, self._status(view, shown, latest)),
            generated=self.history.open_image(record.generated_sha256),
            prompt=prompt_html(record.prompt, previous.prompt if previous else None),
            candidates=candidate_frame(candidates),
            candidates_note=note,
            plot=score_plot(list(records.values()), shown),
            edited_prompt=record.prompt,
            best_prompt=(pause or {}).get("best_prompt") or detail.best_prompt or record.prompt,
            round=gr.Dropdown(choices=sorted(records), value=shown),
        )

    def _status(self, view: SessionView, shown: int, latest: int) -> str:
        pause, detail = view.pause, view.detail
        records = {record.index: record for record in detail.iterations_detail}
        if pause is None:
            best = f"{detail.best_clip_i:.4f}" if detail.best_clip_i is not None else "–"
            text = (f"Session `{view.run_id}` **{detail.status}**: {detail.stopped_because or detail.error or 'no reason stored'}. "
                    f"Best CLIP-I {best}.")
        else:
            text = (f"Session `{view.run_id}` · iteration {pause['iteration']} · CLIP-I {pause['clip_i']:.4f} · "
                    f"CLIP-T {pause['clip_t']:.4f} · best CLIP-I {pause['best_clip_i']:.4f} at iteration "
                    f"{pause['best_iteration']} — waiting for your reply")
            if pause.get("notice"):
                text += f"\n\n*{pause['notice']}*"
            extras = [f"pinned: {', '.join(pause['pinned'])}"] if pause["pinned"] else []
            extras += [f"banned: {', '.join(pause['banned'])}"] if pause["banned"] else []
            if extras:
                text += "\n\n" + " · ".join(extras)
        if shown != latest and shown in records:
            text = (f"Showing iteration {shown} ({scores_text(records[shown])}); pick iteration {latest} in the round "
                    f"list to see where the session is.\n\n" + text)
        return text

    # Internals

    def _phrases(self, action: str, run_id: Any, phrases: Any) -> Iterator[Screen]:
        listed = split_phrases(phrases if isinstance(phrases, str) else "")
        if not listed:
            yield Screen(status=f"Type one or more phrases to {action}, separated by commas.")
            return
        yield from self._reply(run_id, HumanTurn(action=action, phrases=listed))

    def _reply(self, run_id: Any, turn: HumanTurn) -> Iterator[Screen]:
        run_id = _text(run_id)
        if not run_id:
            yield Screen(status="Start or resume a session first.")
            return
        try:
            view = self.driver.view(run_id)
        except ArpoError as problem:
            yield Screen(status=f"**Cannot reply:** {problem}")
            return
        if view.pause is None and view.detail.status == "running":
            if turn.action == "stop":  # during `run N`: ask again after the image being made
                self.driver.request_pause(view.run_id)
                yield Screen(status="Understood: pause after the image being made; then Stop again to finish, or reply.")
            else:
                yield Screen(status=f"Session `{view.run_id}` is still working on the last reply; send this once it waits for you.")
            return
        if view.pause is None:
            yield Screen(status=f"Session `{view.run_id}` has {view.detail.status} ({view.detail.stopped_because or view.detail.error or 'no reason stored'}) "
                                "and takes no more replies; start a new session to go on.")
            return
        if turn.action == "unpin":
            missing = [p for p in turn.phrases if p.lower() not in {q.lower() for q in view.pause["pinned"]}]
            if missing:
                pinned = ", ".join(view.pause["pinned"]) or "nothing"
                yield Screen(status=f"Not pinned: {', '.join(missing)} (pinned now: {pinned}).")
                return
        understood = understood_line(turn)
        before = view.pause["iteration"]
        yield Screen(status=f"{understood} Working…")

        def explain(after: SessionView) -> str:
            return _lines(understood, _unattended_outcome(turn, before, after))

        yield from self._work(lambda progress: self.driver.reply(view.run_id, turn, on_update=progress),
                              understood=explain, total=turn.iterations if turn.action in ("continue", "feedback") else 1)

    def _work(self, job: Callable[[Callable[[str, dict], None]], SessionView],
              understood: str | Callable[[SessionView], str] = "", total: int = 1) -> Iterator[Screen]:
        """Run `job` in a thread and yield progress as nodes finish (iteration k of N, the node at
        work, each new image as soon as it is made), then the round the session stopped at."""
        updates: queue.Queue[tuple[str, dict] | None] = queue.Queue()
        outcome: dict[str, Any] = {}

        def run() -> None:
            try:
                outcome["view"] = job(lambda node, update: updates.put((node, update)))
            except ArpoError as problem:
                outcome["error"] = _menu_words(str(problem))
            except Exception as problem:  # the page must get a line, never a traceback
                log.exception("session work failed")
                outcome["error"] = f"unexpected {type(problem).__name__}: {problem} (details in the server log)"
            finally:
                updates.put(None)

        threading.Thread(target=run, name="arpo-ui-session", daemon=True).start()
        started = time.monotonic()
        done = 0
        while (item := updates.get()) is not None:
            node, update = item
            if node == "generate" and "clip_i" in update:
                done += 1
            line = progress_line(node, update) or ""
            step = f"image {min(done, total)} of {total}" if total > 1 else ""
            words = " · ".join(part for part in (step, NODE_WORDS.get(node, node), line.strip()) if part)
            screen = Screen(status=f"Working… {time.monotonic() - started:.0f} s · {words}")
            if node == "generate" and "generated_sha256" in update:
                screen.generated = self.history.open_image(update["generated_sha256"])
            yield screen
        if "error" in outcome:
            yield Screen(status=f"**Error:** {outcome['error']}")
            return
        view = outcome["view"]
        line = understood(view) if callable(understood) else understood
        yield self.screen(view, understood=line)

    def config(self, form: StartForm):
        """The run configuration the start form asks for; a bad field is one InvalidInputError."""
        models = _text(form.models)
        if not models:
            raise InvalidInputError("choose a model stack in Models (tiny for a quick offline try)")
        choices = {}
        for name in ("brain", "vlm_brain", "llm_brain"):
            value = _text(getattr(form, name)).lower()
            if value and value not in BRAIN_PROVIDERS:
                raise InvalidInputError(f"{name.replace('_', ' ')} must be one of {', '.join(BRAIN_PROVIDERS)}, not {value!r}")
            choices[name] = value or None
        framework = _text(form.framework).lower() or None
        if framework and framework not in FRAMEWORKS:
            raise InvalidInputError(f"framework must be {' or '.join(FRAMEWORKS)}, not {framework!r}")
        seed = None
        if form.seed not in (None, ""):
            seed = _whole_number(form.seed)
            if seed is None or not 0 <= seed <= MAX_SEED:
                raise InvalidInputError(f"the seed must be a whole number from 0 to {MAX_SEED}, not {_shown(form.seed)}")
        urls = {name: _text(getattr(form, name)) or None for name in ("base_url", "vlm_base_url", "llm_base_url")}
        for name, url in urls.items():
            if url and not url.startswith(("http://", "https://")):
                raise InvalidInputError(f"the {name.replace('_', ' ').replace('url', 'URL')} must start with http:// or https://, not {url!r}")
        form_choices = (
            ModelOptions.chosen(models=models),
            BrainOptions.chosen(vlm=_text(form.vlm) or None, llm=_text(form.llm) or None, **choices, **urls),
            LoopOptions.chosen(framework=framework, seed=seed),
        )
        return self.defaults.settings.run_config(*self.defaults.chosen, *form_choices)


def understood_line(turn: HumanTurn) -> str:
    """What the page heard, in words, before it starts working on it."""
    if turn.action == "continue":
        return "Understood: one more iteration." if turn.iterations == 1 else f"Understood: run {turn.iterations} iterations without asking."
    if turn.action == "stop":
        return "Understood: stop and keep the best prompt."
    if turn.action == "feedback":
        return f"Understood as feedback: “{turn.text}” — the next proposal addresses it first."
    if turn.action == "edit":
        return f"Understood: replace the prompt with “{turn.text}” and render it."
    if turn.action == "refine":
        return f"Understood: refine the best prompt with {turn.tool} now; what it finds goes through the same selection."
    return f"Understood: {turn.action} {', '.join(turn.phrases)}."


def _unattended_outcome(turn: HumanTurn, before: int, after: SessionView) -> str:
    """For `run N`: how many iterations ran and, when fewer than N, why it stopped."""
    if turn.action not in ("continue", "feedback") or turn.iterations == 1:
        return ""
    records = after.detail.iterations_detail
    latest = after.pause["iteration"] if after.pause else (records[-1].index if records else before)
    ran = max(latest - before, 0)
    if ran >= turn.iterations:
        return f"Ran {turn.iterations} of {turn.iterations} iterations."
    reason = (after.pause or {}).get("notice") or after.detail.stopped_because or "the session asked for a reply"
    return f"Stopped after {ran} of {turn.iterations} iterations because {reason}."


def _menu_words(problem: str) -> str:
    """Error lines name CLI flags; on the page the same choices are menus and boxes."""
    problem = problem.replace("export it,", "set it where `arpo ui` runs and restart it,")
    for flag, menu in (("--brain offline", "Brain: offline"), ("--brain vllm", "Brain: vllm"),
                       ("--brain openai", "Brain: openai"), ("--brain", "the Brain menu"), ("--vlm-brain", "the VLM brain menu"),
                       ("--llm-brain", "the LLM brain menu"), ("--base-url", "the Server URL box"), ("--models", "the Models menu")):
        problem = problem.replace(flag, menu)
    return problem


def _text(value: Any) -> str:
    return value.strip() if isinstance(value, str) else ""


def _whole_number(value: Any) -> int | None:
    """An integer from a Number box or a dropdown (which may send a float, a string or None)."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return None
    if isinstance(value, (int, float)) and math.isfinite(value) and float(value).is_integer():
        return int(value)
    return None


def _shown(value: Any) -> str:
    return "nothing" if value in (None, "") else repr(value)


def _lines(*parts: str) -> str:
    return "\n\n".join(part for part in parts if part)
