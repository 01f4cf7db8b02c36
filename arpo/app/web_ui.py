"""The web UI (`arpo ui`): a session in the browser, built with Gradio.

Upload an image, pick models and brains, and start: every regenerated image appears beside the
reference with its prompt (new phrases highlighted), its scores, the candidate phrases and a plot of
the scores so far. Reply in the box as at the terminal (feedback, `edit ...`, `run N`, `pin ...`,
`unpin ...`, `ban ...`, `stop`) or with the buttons; browse earlier rounds; find any stored run in the
History tab, look through its iterations, export it, and resume a session; split the best prompt into
content and style, edit either part or swap a word, and render the edit with the run's seed.
Everything goes through the same `SessionDriver` as the terminal, so a session started here can be
resumed there and the other way.

The layout lives here; the handlers in `web_ui_handlers` (session tab) and `web_ui_history`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import gradio as gr

from arpo.app.web_ui_handlers import SessionHandlers, UiDefaults
from arpo.app.web_ui_history import HistoryHandlers, export_files, picked_run_id, run_table
from arpo.app.web_ui_view import CANDIDATE_COLUMNS, Screen
from arpo.core.errors import ArpoError
from arpo.core.run_config import BRAIN_PROVIDERS, FRAMEWORKS
from arpo.graphs.session_driver import SessionDriver
from arpo.storage.history import History

__all__ = ["MODEL_CHOICES", "UiDefaults", "build_ui"]

log = logging.getLogger(__name__)

MODEL_CHOICES = ["tiny", "tiny-sdxl", "tiny-pixart", "sd15", "sdxl", "pixart"]
ROLE_BRAINS = [("same as Brain", "")] + [(name, name) for name in BRAIN_PROVIDERS]
REPLY_PLACEHOLDER = "feedback in words, or: c · run 3 · edit NEW PROMPT · pin/unpin/ban PHRASE, ... · stop · help"


def build_ui(history: History, defaults: UiDefaults, driver: SessionDriver | None = None) -> gr.Blocks:
    """The Gradio app for one history; models load on the first session and are shared after."""
    driver = driver or SessionDriver(history)
    session = SessionHandlers(driver, defaults)
    stored = HistoryHandlers(driver)
    with gr.Blocks(title="arpo") as app:
        run_id = gr.State(None)
        gr.Markdown("# arpo\nRecover the prompt behind an image, and steer the search.")
        with gr.Tabs() as tabs:
            with gr.Tab("Session", id="session"):
                with gr.Row():
                    reference = gr.Image(type="filepath", label="Reference image", elem_id="reference", height=320)
                    generated = gr.Image(type="pil", label="Regenerated image (round shown)", elem_id="generated", height=320, interactive=False)
                with gr.Accordion("Models and brains", open=False):
                    with gr.Row():
                        models = gr.Dropdown(MODEL_CHOICES, value=defaults.shown("models"), label="Models", allow_custom_value=True, elem_id="models",
                                             info="tiny, tiny-sdxl, tiny-pixart: small random models for a quick offline try")
                        brain = gr.Dropdown(list(BRAIN_PROVIDERS), value=defaults.shown("brain"), label="Brain (both roles)", elem_id="brain")
                        framework = gr.Radio(list(FRAMEWORKS), value=defaults.shown("framework"), label="Framework", elem_id="framework")
                        seed = gr.Number(value=defaults.shown("seed"), precision=0, label="Seed", elem_id="seed")
                    with gr.Row():
                        base_url = gr.Textbox(value=defaults.shown("base_url"), label="Server URL (vLLM / compatible, both roles)", elem_id="base-url")
                        vlm = gr.Textbox(value=defaults.shown("vlm"), label="VLM model", elem_id="vlm")
                        llm = gr.Textbox(value=defaults.shown("llm"), label="LLM model", elem_id="llm")
                    with gr.Row():
                        vlm_brain = gr.Dropdown(ROLE_BRAINS, value=defaults.shown("vlm_brain"), label="VLM brain", elem_id="vlm-brain")
                        vlm_base_url = gr.Textbox(value=defaults.shown("vlm_base_url"), label="VLM server URL", elem_id="vlm-base-url")
                        llm_brain = gr.Dropdown(ROLE_BRAINS, value=defaults.shown("llm_brain"), label="LLM brain", elem_id="llm-brain")
                        llm_base_url = gr.Textbox(value=defaults.shown("llm_base_url"), label="LLM server URL", elem_id="llm-base-url")
                start = gr.Button("Start session", variant="primary", elem_id="start")
                status = gr.Markdown("Upload an image and start a session.", elem_id="status")
                prompt_view = gr.HTML(elem_id="prompt-view")
                best_prompt = gr.Textbox(label="Best prompt so far", interactive=False, buttons=["copy"], elem_id="best-prompt")
                with gr.Row():
                    with gr.Column(scale=3):
                        round_shown = gr.Dropdown(choices=[], label="Round shown", elem_id="round", interactive=True)
                        candidates = gr.Dataframe(headers=CANDIDATE_COLUMNS, label="Candidate phrases of the round shown",
                                                  interactive=False, elem_id="candidates", wrap=True)
                        candidates_note = gr.Markdown(elem_id="candidates-note")
                    scores = gr.Plot(label="Scores over iterations", elem_id="scores")
                with gr.Row():
                    feedback = gr.Textbox(label="Your reply (Enter sends)", placeholder=REPLY_PLACEHOLDER, elem_id="feedback", scale=4, lines=1, max_lines=1)
                    send_feedback = gr.Button("Send", elem_id="send-feedback")
                with gr.Row():
                    carry_on = gr.Button("Continue", elem_id="continue")
                    unattended = gr.Number(value=3, precision=0, label="Iterations", scale=0, elem_id="iterations")
                    run_several = gr.Button("Run unattended", elem_id="run-several")
                    stop = gr.Button("Stop", variant="stop", elem_id="stop")
                with gr.Row():
                    edited_prompt = gr.Textbox(label="Edit the prompt", elem_id="edit-prompt", scale=4)
                    use_prompt = gr.Button("Use this prompt", elem_id="use-prompt")
                with gr.Row():
                    phrases = gr.Textbox(label="Phrases (comma separated)", elem_id="phrases", scale=4)
                    pin = gr.Button("Pin", elem_id="pin")
                    unpin = gr.Button("Unpin", elem_id="unpin")
                    ban = gr.Button("Ban", elem_id="ban")
                with gr.Row():
                    resume_id = gr.Textbox(label="Session id to resume", elem_id="resume-id", scale=4)
                    resume = gr.Button("Resume", elem_id="resume")
                with gr.Row():
                    export = gr.Button("Export this session (JSON and images)", elem_id="export")
                    exported = gr.File(label="Exported files", file_count="multiple", elem_id="exported", interactive=False, height=120)
            with gr.Tab("Edit and render", id="edit"):
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
            with gr.Tab("History", id="history") as history_tab:
                with gr.Row():
                    run_filter = gr.Textbox(label="Filter (id, kind, status, image or prompt words)", elem_id="run-filter", scale=4)
                    refresh = gr.Button("Refresh", elem_id="refresh")
                runs = gr.Dataframe(headers=None, interactive=False, elem_id="runs", wrap=True, max_height=300)
                with gr.Row():
                    opened_id = gr.Textbox(label="Run id", elem_id="opened-id", scale=4)
                    open_run = gr.Button("Open", elem_id="open-run")
                    resume_opened = gr.Button("Resume this session", variant="primary", elem_id="resume-opened")
                opened_summary = gr.Markdown(elem_id="opened-summary")
                with gr.Row():
                    opened_reference = gr.Image(label="Reference", interactive=False, height=240, elem_id="opened-reference", scale=1)
                    opened_gallery = gr.Gallery(label="Iterations", columns=4, height=240, elem_id="opened-gallery", scale=3)
                opened_iterations = gr.Dataframe(interactive=False, elem_id="opened-iterations", wrap=True)
                with gr.Row():
                    export_json = gr.DownloadButton("Download result (JSON)", elem_id="export-json")
                    export_zip = gr.DownloadButton("Download images (zip)", elem_id="export-zip")

        screen = [run_id, status, generated, prompt_view, candidates, candidates_note, scores, edited_prompt,
                  best_prompt, round_shown, reference, renders]
        assert len(screen) == len(Screen().values())
        # Gradio's spinner would cover the images and guess a time from earlier events; the status
        # line streams real progress instead (the node at work, image k of N, seconds so far).
        working = {"show_progress": "hidden"}
        start.click(_streamed(session.start), [reference, models, brain, vlm_brain, llm_brain, base_url, vlm_base_url,
                                               llm_base_url, vlm, llm, framework, seed], screen, **working)
        for trigger in (send_feedback.click, feedback.submit):
            trigger(_streamed(session.reply_text), [run_id, feedback], screen, **working).then(lambda: "", None, feedback)
        carry_on.click(_streamed(session.carry_on), [run_id], screen, **working)
        run_several.click(_streamed(session.run_several), [run_id, unattended], screen, **working)
        stop.click(_streamed(session.stop), [run_id], screen, **working)
        use_prompt.click(_streamed(session.edit), [run_id, edited_prompt], screen, **working)
        for button, handler in ((pin, session.pin), (unpin, session.unpin), (ban, session.ban)):
            button.click(_streamed(handler), [run_id, phrases], screen, **working).then(lambda: "", None, phrases)
        round_shown.input(_once(session.show_round), [run_id, round_shown], screen, **working)
        resume.click(_streamed(session.resume), [resume_id], screen, **working)

        load_parts.click(_guarded(stored.parts, 3), [run_id], [content, style, render_status])
        render.click(_guarded(stored.render, 2, status_at=0), [run_id, content, style, replace_old, replace_new],
                     [render_status, renders], show_progress_on=[render_status])

        listing = {"fn": lambda text: run_table(history, text), "inputs": [run_filter], "outputs": [runs]}
        app.load(**listing)
        refresh.click(**listing)
        history_tab.select(**listing)  # a session started since the page opened is listed at once
        export.click(_guarded(lambda run: export_files(history, run), 2, status_at=1), [run_id], [exported, status])
        run_filter.submit(**listing)
        run_filter.input(**listing)
        opened = [opened_summary, opened_reference, opened_gallery, opened_iterations, export_json, export_zip]
        runs.select(picked_run_id, None, opened_id).then(_guarded(stored.open_run, 6, status_at=0), [opened_id], opened)
        open_run.click(_guarded(stored.open_run, 6, status_at=0), [opened_id], opened)
        opened_id.submit(_guarded(stored.open_run, 6, status_at=0), [opened_id], opened)
        resume_opened.click(lambda: gr.Tabs(selected="session"), None, tabs).then(
            _streamed(session.resume), [opened_id], screen, **working)
    return app


def _streamed(handler: Callable[..., Iterator[Screen]]) -> Callable[..., Iterator[list]]:
    """A session handler as Gradio calls it: lists of output values, and a line for any surprise."""

    def run(*args: Any) -> Iterator[list]:
        try:
            for screen in handler(*args):
                yield screen.values()
        except ArpoError as problem:
            yield Screen(status=f"**Error:** {problem}").values()
        except Exception as problem:  # never a traceback or a red badge on every component
            log.exception("web UI handler %s failed", getattr(handler, "__name__", handler))
            yield Screen(status=f"**Error:** unexpected {type(problem).__name__}: {problem} (details in the server log)").values()

    return run


def _once(handler: Callable[..., Screen]) -> Callable[..., list]:
    def run(*args: Any) -> list:
        return next(_streamed(lambda *a: iter([handler(*a)]))(*args))

    return run


def _guarded(handler: Callable[..., Any], outputs: int, status_at: int | None = None) -> Callable[..., Any]:
    """A tab handler whose surprises become a line in its status output (the last one, unless told)."""
    where = outputs - 1 if status_at is None else status_at

    def run(*args: Any) -> Any:
        try:
            return handler(*args)
        except Exception as problem:
            log.exception("web UI handler %s failed", getattr(handler, "__name__", handler))
            values: list[Any] = [gr.skip()] * outputs
            values[where] = f"**Error:** {type(problem).__name__}: {problem}"
            return tuple(values)

    return run
