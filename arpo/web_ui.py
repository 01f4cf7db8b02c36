"""The web UI (`arpo ui`): a session in the browser, built with Gradio.

Upload an image, pick models and brains, and start: every regenerated image appears beside the
reference with its prompt (new phrases highlighted), its scores, the candidate phrases and a plot of
the scores so far. Reply with feedback, an edited prompt, pins or bans, or let it run a few
iterations; browse past sessions and resume one; split the best prompt into content and style, edit
either part or swap a word, and render the edit with the run's seed. Everything goes through the same
`SessionDriver` as the terminal, so a session started here can be resumed there and the other way.
"""

from __future__ import annotations

import html
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import gradio as gr
import pandas as pd

from arpo.errors import ArpoError
from arpo.graphs.human_turn import HumanTurn, split_phrases
from arpo.graphs.prompt_text import phrase_key, prompt_phrases
from arpo.graphs.run_config import RunConfig
from arpo.graphs.session_driver import SessionDriver, SessionView
from arpo.reporting import progress_line
from arpo.run_options import build_run_config
from arpo.settings import ArpoSettings
from arpo.storage.history import History

CANDIDATE_COLUMNS = ["phrase", "score", "selected", "reason"]
SESSION_COLUMNS = ["id", "status", "image", "iterations", "best CLIP-I", "best prompt"]


@dataclass
class UiDefaults:
    """What the start form shows before the person changes it (from flags and ARPO_* settings)."""

    models: str = "sd15"
    brain: str = "openai"
    base_url: str = ""
    vlm: str = ""
    llm: str = ""
    framework: str = "vanilla"
    seed: int = 0

    @classmethod
    def from_settings(cls, settings: ArpoSettings, **overrides: Any) -> "UiDefaults":
        values = {
            "models": settings.models, "brain": settings.brain, "base_url": settings.base_url or "",
            "vlm": settings.vlm or "", "llm": settings.llm or "", "framework": settings.framework,
            "seed": settings.seed,
        }
        values.update({key: value for key, value in overrides.items() if value is not None})
        return cls(**values)


def build_ui(history: History, defaults: UiDefaults, driver: SessionDriver | None = None) -> gr.Blocks:
    """The Gradio app for one history; models load on the first session and are shared after."""
    driver = driver or SessionDriver(history)
    handlers = _Handlers(driver, defaults)
    with gr.Blocks(title="arpo") as app:
        run_id = gr.State(None)
        gr.Markdown("# arpo\nRecover the prompt behind an image, and steer the search.")
        with gr.Tab("Session"):
            with gr.Row():
                reference = gr.Image(type="filepath", label="Reference image", elem_id="reference", height=320)
                generated = gr.Image(type="pil", label="Regenerated image", elem_id="generated", height=320, interactive=False)
            with gr.Accordion("Models and brains", open=False):
                with gr.Row():
                    models = gr.Dropdown(["tiny", "sd15", "sdxl", "pixart"], value=defaults.models, label="Models", allow_custom_value=True, elem_id="models")
                    brain = gr.Dropdown(["openai", "vllm", "offline"], value=defaults.brain, label="Brain", elem_id="brain")
                    framework = gr.Radio(["vanilla", "enhanced"], value=defaults.framework, label="Framework")
                with gr.Row():
                    base_url = gr.Textbox(value=defaults.base_url, label="Server URL (vLLM / compatible)", elem_id="base-url")
                    vlm = gr.Textbox(value=defaults.vlm, label="VLM model")
                    llm = gr.Textbox(value=defaults.llm, label="LLM model")
                    seed = gr.Number(value=defaults.seed, precision=0, label="Seed")
            start = gr.Button("Start session", variant="primary", elem_id="start")
            status = gr.Markdown("Upload an image and start a session.", elem_id="status")
            prompt_view = gr.HTML(elem_id="prompt-view")
            with gr.Row():
                candidates = gr.Dataframe(headers=CANDIDATE_COLUMNS, label="Candidate phrases", interactive=False, elem_id="candidates")
                scores = gr.LinePlot(x="iteration", y="score", color="metric", label="Scores over iterations", elem_id="scores")
            with gr.Row():
                feedback = gr.Textbox(label="Feedback for the next proposal", placeholder="the sky should be stormier", elem_id="feedback", scale=4)
                send_feedback = gr.Button("Send feedback", elem_id="send-feedback")
            with gr.Row():
                carry_on = gr.Button("Continue", elem_id="continue")
                unattended = gr.Number(value=3, precision=0, minimum=1, maximum=100, label="Iterations", scale=0)
                run_several = gr.Button("Run unattended", elem_id="run-several")
                stop = gr.Button("Stop", variant="stop", elem_id="stop")
            with gr.Row():
                edited_prompt = gr.Textbox(label="Edit the prompt", elem_id="edit-prompt", scale=4)
                use_prompt = gr.Button("Use this prompt", elem_id="use-prompt")
            with gr.Row():
                phrases = gr.Textbox(label="Phrases (comma separated)", elem_id="phrases", scale=4)
                pin = gr.Button("Pin", elem_id="pin")
                ban = gr.Button("Ban", elem_id="ban")
        with gr.Tab("Edit and render"):
            gr.Markdown("Edit the best prompt's content or style, or swap a word everywhere; the edit renders with the session's seed and model.")
            load_parts = gr.Button("Load the best prompt's parts", elem_id="load-parts")
            content = gr.Textbox(label="Content (what is shown)", elem_id="content")
            style = gr.Textbox(label="Style (how it looks)", elem_id="style")
            with gr.Row():
                replace_old = gr.Textbox(label="Replace word", elem_id="replace-old")
                replace_new = gr.Textbox(label="with", elem_id="replace-new")
            render = gr.Button("Render the edit", variant="primary", elem_id="render")
            render_status = gr.Markdown(elem_id="render-status")
            renders = gr.Gallery(label="Renders", elem_id="renders", columns=3, height=320)
        with gr.Tab("Past sessions"):
            refresh = gr.Button("Refresh", elem_id="refresh")
            sessions = gr.Dataframe(headers=SESSION_COLUMNS, interactive=False, elem_id="sessions")
            with gr.Row():
                resume_id = gr.Textbox(label="Session id", elem_id="resume-id")
                resume = gr.Button("Resume", elem_id="resume")

        shown = [run_id, status, generated, prompt_view, candidates, scores, edited_prompt]
        start.click(handlers.start, [reference, models, brain, base_url, vlm, llm, framework, seed], shown + [reference])
        send_feedback.click(handlers.feedback, [run_id, feedback], shown).then(lambda: "", None, feedback)
        carry_on.click(handlers.carry_on, [run_id], shown)
        run_several.click(handlers.run_several, [run_id, unattended], shown)
        stop.click(handlers.stop, [run_id], shown)
        use_prompt.click(handlers.edit, [run_id, edited_prompt], shown)
        pin.click(handlers.pin, [run_id, phrases], shown).then(lambda: "", None, phrases)
        ban.click(handlers.ban, [run_id, phrases], shown).then(lambda: "", None, phrases)
        resume.click(handlers.resume, [resume_id], shown + [reference])
        refresh.click(handlers.sessions, None, sessions)
        app.load(handlers.sessions, None, sessions)
        load_parts.click(handlers.parts, [run_id], [content, style, render_status])
        render.click(handlers.render, [run_id, content, style, replace_old, replace_new], [render_status, renders])
    return app


class _Handlers:
    """The UI's event handlers; each long one streams progress lines while the session works."""

    def __init__(self, driver: SessionDriver, defaults: UiDefaults) -> None:
        self.driver = driver
        self.defaults = defaults

    # Session

    def start(self, image, models, brain, base_url, vlm, llm, framework, seed) -> Iterator[list]:
        if image is None:
            yield self._message("Upload a reference image first.") + [gr.skip()]
            return
        from arpo.tools.reference_image import load_reference_image

        try:
            config = self._config(models, brain, base_url, vlm, llm, framework, seed)
            reference = load_reference_image(image)
        except ArpoError as problem:
            yield self._message(f"**Cannot start:** {problem}") + [gr.skip()]
            return
        for shown in self._work(lambda progress: self.driver.start(reference, config, on_update=progress)):
            yield shown + [gr.skip()]

    def feedback(self, run_id, text) -> Iterator[list]:
        if not (text or "").strip():
            yield self._message("Type some feedback first.", run_id)
            return
        yield from self._reply(run_id, HumanTurn(action="feedback", text=text))

    def carry_on(self, run_id) -> Iterator[list]:
        yield from self._reply(run_id, HumanTurn(action="continue"))

    def run_several(self, run_id, iterations) -> Iterator[list]:
        yield from self._reply(run_id, HumanTurn(action="continue", iterations=int(iterations or 1)))

    def stop(self, run_id) -> Iterator[list]:
        yield from self._reply(run_id, HumanTurn(action="stop"))

    def edit(self, run_id, prompt) -> Iterator[list]:
        if not (prompt or "").strip():
            yield self._message("The edited prompt is empty.", run_id)
            return
        yield from self._reply(run_id, HumanTurn(action="edit", text=prompt))

    def pin(self, run_id, phrases) -> Iterator[list]:
        yield from self._reply(run_id, _phrase_turn("pin", phrases))

    def ban(self, run_id, phrases) -> Iterator[list]:
        yield from self._reply(run_id, _phrase_turn("ban", phrases))

    def resume(self, session_id) -> Iterator[list]:
        session_id = (session_id or "").strip()
        if not session_id:
            yield self._message("Type a session id from the list.") + [gr.skip()]
            return
        reference = []
        for shown in self._work(lambda progress: self.driver.resume(session_id, on_update=progress)):
            if not reference and shown[0]:
                detail = self.driver.history.get_run(shown[0])
                reference = [self.driver.history.open_image(detail.reference_sha256)]
            yield shown + (reference or [gr.skip()])

    def sessions(self) -> pd.DataFrame:
        runs = [run for run in self.driver.history.list_runs(limit=200) if run.kind == "session"]
        rows = [
            [run.id, run.status, run.reference_name, run.iterations,
             round(run.best_clip_i, 4) if run.best_clip_i is not None else None, run.best_prompt or ""]
            for run in runs
        ]
        return pd.DataFrame(rows, columns=SESSION_COLUMNS)

    # Edit and render

    def parts(self, run_id):
        if not run_id:
            return gr.skip(), gr.skip(), "Start or resume a session first."
        try:
            parts = self.driver.prompt_parts(run_id)
        except ArpoError as problem:
            return gr.skip(), gr.skip(), f"**Cannot split:** {problem}"
        return parts.content, parts.style, "Loaded the best prompt's content and style."

    def render(self, run_id, content, style, replace_old, replace_new):
        if not run_id:
            return "Start or resume a session first.", gr.skip()
        replace = (replace_old.strip(), (replace_new or "").strip()) if (replace_old or "").strip() else None
        try:
            render = self.driver.render_edit(
                run_id, content=(content or None), style=(style or None), replace=replace
            )
        except ArpoError as problem:
            return f"**Cannot render:** {problem}", gr.skip()
        gallery = [
            (self.driver.history.open_image(item.image_sha256), item.prompt)
            for item in self.driver.history.renders(run_id)
        ]
        return f"Rendered with seed {render.seed}: {html.escape(render.prompt)}", gallery

    # Shared

    def _reply(self, run_id, turn: HumanTurn | None) -> Iterator[list]:
        if not run_id:
            yield self._message("Start or resume a session first.")
            return
        if turn is None:
            yield self._message("Type one or more phrases, separated by commas.", run_id)
            return
        yield from self._work(lambda progress: self.driver.reply(run_id, turn, on_update=progress))

    def _work(self, job: Callable[[Callable[[str, dict], None]], SessionView]) -> Iterator[list]:
        """Run `job` in a thread and yield the status line as nodes finish, then the session view."""
        updates: queue.Queue[tuple[str, dict] | None] = queue.Queue()
        outcome: dict[str, Any] = {}

        def run() -> None:
            try:
                outcome["view"] = job(lambda node, update: updates.put((node, update)))
            except ArpoError as problem:
                outcome["error"] = str(problem)
            finally:
                updates.put(None)

        threading.Thread(target=run, name="arpo-ui-session", daemon=True).start()
        while (item := updates.get()) is not None:
            node, update = item
            line = progress_line(node, update)
            if line:
                yield self._progress(line, update if node == "generate" else None)
        if "error" in outcome:
            yield [gr.skip(), f"**Error:** {outcome['error']}"] + [gr.skip()] * 5
            return
        yield self._shown(outcome["view"])

    def _progress(self, line: str, generated: dict | None) -> list:
        """A status line while the session works; each new image appears as soon as it is made."""
        shown = [gr.skip(), f"Working… {html.escape(line)}"] + [gr.skip()] * 5
        if generated and "generated_sha256" in generated:
            shown[2] = self.driver.history.open_image(generated["generated_sha256"])
        return shown

    def _shown(self, view: SessionView) -> list:
        pause = view.pause
        history = self.driver.history
        iterations = history.iterations(view.run_id)
        plot = pd.DataFrame(
            [{"iteration": r.index, "score": r.clip_i, "metric": "CLIP-I"} for r in iterations]
            + [{"iteration": r.index, "score": r.clip_t, "metric": "CLIP-T"} for r in iterations]
        )
        if pause is None:
            detail = view.detail
            text = (f"Session `{view.run_id}` **{detail.status}**: {detail.stopped_because or detail.error or ''}. "
                    f"Best CLIP-I {detail.best_clip_i or 0:.4f}.")
            image = history.open_image(iterations[-1].generated_sha256) if iterations else None
            prompt = detail.best_prompt or ""
            return [view.run_id, text, image, _prompt_html(prompt, prompt), _candidate_frame([]), plot, prompt]
        previous = [r.prompt for r in iterations if r.index < pause["iteration"]]
        text = (f"Session `{view.run_id}` · iteration {pause['iteration']} · CLIP-I {pause['clip_i']:.4f} · "
                f"CLIP-T {pause['clip_t']:.4f} · best CLIP-I {pause['best_clip_i']:.4f} at iteration "
                f"{pause['best_iteration']} — waiting for your reply")
        if pause.get("notice"):
            text += f"\n\n*{html.escape(pause['notice'])}*"
        extras = [f"pinned: {', '.join(pause['pinned'])}"] if pause["pinned"] else []
        extras += [f"banned: {', '.join(pause['banned'])}"] if pause["banned"] else []
        if extras:
            text += "\n\n" + " · ".join(extras)
        image = history.open_image(pause["generated_sha256"])
        prompt_html = _prompt_html(pause["prompt"], previous[-1] if previous else pause["prompt"])
        return [view.run_id, text, image, prompt_html, _candidate_frame(pause["candidates"]), plot, pause["prompt"]]

    def _message(self, text: str, run_id: str | None = None) -> list:
        return [run_id, text] + [gr.skip()] * 5

    def _config(self, models, brain, base_url, vlm, llm, framework, seed) -> RunConfig:
        return build_run_config(
            ArpoSettings(), models=models or None, brain=brain or None, base_url=(base_url or "").strip() or None,
            vlm=(vlm or "").strip() or None, llm=(llm or "").strip() or None, framework=framework or None,
            seed=int(seed) if seed is not None else None,
        )


def _phrase_turn(action: str, phrases: str | None) -> HumanTurn | None:
    listed = split_phrases(phrases or "")
    return HumanTurn(action=action, phrases=listed) if listed else None


def _candidate_frame(candidates: list[dict]) -> pd.DataFrame:
    rows = [
        [c["phrase"], round(c["score"], 4) if c["score"] is not None else None, c["selected"], c["reason"]]
        for c in candidates
    ]
    return pd.DataFrame(rows, columns=CANDIDATE_COLUMNS)


def _prompt_html(prompt: str, previous: str) -> str:
    """The prompt with the phrases that the previous prompt lacked highlighted."""
    before = {phrase_key(p) for p in prompt_phrases(previous)}
    parts = []
    for phrase in prompt_phrases(prompt):
        text = html.escape(phrase)
        parts.append(f'<mark class="new-phrase">{text}</mark>' if phrase_key(phrase) not in before else text)
    return f'<div class="prompt"><strong>Prompt:</strong> {", ".join(parts)}</div>'
