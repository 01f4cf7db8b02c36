"""`arpo session`: a conversation about one image at the terminal, resumable by id."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from arpo.app import options as opt
from arpo.core.errors import InvalidInputError
from arpo.core.settings import ArpoSettings, BrainOptions, HistoryOptions, LoopOptions, ModelOptions

SESSION_HELP = (
    "Hold a conversation about IMAGE: after every regenerated image arpo shows the prompt, its scores and "
    "the candidate phrases, and you reply (Enter to go on, feedback in words, edit, pin, ban, run N, stop; "
    "type help). Leave at any time and pick it up later with --resume ID."
)


def register(app: typer.Typer) -> None:
    """Add the `session` command to the arpo CLI."""
    app.command(name="session", help=SESSION_HELP)(session)


@opt.with_option_groups
def session(
    image: Annotated[Optional[Path], typer.Argument(help="Reference image (omit with --resume).")] = None,
    resume: Annotated[Optional[str], typer.Option(help="Continue this session (id or unique prefix).")] = None,
    *,
    models: ModelOptions,
    brains: BrainOptions,
    loop: LoopOptions,
    init_prompt: opt.InitPrompt = None,
    store: HistoryOptions,
) -> None:
    from arpo.app.reporting import print_progress
    from arpo.app.session_terminal import TerminalSession
    from arpo.graphs.session_driver import SessionDriver

    settings = ArpoSettings.read()
    if (image is None) == (resume is None):
        raise InvalidInputError("give either an IMAGE to start a session or --resume ID to continue one")
    history = opt.open_history(settings, store)
    driver = SessionDriver(history)
    if resume is not None:
        from arpo.app.reporting import iterations_text

        detail = history.get_run(resume)  # an unknown id is one line before anything prints
        print(f"resuming session {detail.id}; so far:\n{iterations_text(detail, history)}", file=sys.stderr)
        view = driver.resume(detail.id, on_update=print_progress)
    else:
        from arpo.tools.reference_image import load_reference_image

        config = settings.run_config(models, brains, loop, initial_prompt=init_prompt)
        reference = load_reference_image(image)
        view = driver.start(reference, config, on_update=print_progress)
        print(f"session {view.run_id} started (resume with: arpo session --resume {view.run_id})", file=sys.stderr)
    TerminalSession(driver, input, sys.stdout).converse(view)
