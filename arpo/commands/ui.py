"""`arpo ui`: the web UI for sessions, served on this machine (127.0.0.1) unless told otherwise."""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from arpo import run_options as opt
from arpo.settings import ArpoSettings

UI_HELP = (
    "Serve the web UI: upload an image, pick models and brains, watch iterations arrive, give feedback, edit "
    "the prompt, resume past sessions and render edits. Binds to 127.0.0.1 unless --host says otherwise."
)


def register(app: typer.Typer) -> None:
    """Add the `ui` command to the arpo CLI."""
    app.command(name="ui", help=UI_HELP)(ui)


def ui(
    host: Annotated[str, typer.Option(help="Address to listen on; 0.0.0.0 exposes the UI to your network.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 7860,
    models: opt.Models = None,
    brain: opt.Brain = None,
    base_url: opt.BaseUrl = None,
    vlm: opt.Vlm = None,
    llm: opt.Llm = None,
    framework: opt.Framework = None,
    seed: opt.Seed = None,
    scheduler: opt.Scheduler = None,
    dtype: opt.Dtype = None,
    db: opt.Database = None,
) -> None:
    # A local tool has no business reporting usage to Gradio's servers; the user can still opt in.
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from arpo.storage.history import History
    from arpo.web_ui import UiDefaults, build_ui

    settings = ArpoSettings()
    _models_settings_from_flags(settings, scheduler, dtype)
    defaults = UiDefaults.from_settings(
        settings, models=models, brain=brain, base_url=base_url, vlm=vlm, llm=llm, framework=framework, seed=seed
    )
    history = History.open(db or settings.db)
    app = build_ui(history, defaults)
    print(f"arpo ui on http://{host}:{port} (Ctrl-C to stop)", file=sys.stderr)
    app.queue().launch(server_name=host, server_port=port, footer_links=[], quiet=True)


def _models_settings_from_flags(settings: ArpoSettings, scheduler: str | None, dtype: str | None) -> None:
    """Make --scheduler/--dtype this server's settings: the UI reads ArpoSettings for every run it
    starts, so the checked values go into this process's ARPO_* environment."""
    checked = opt.build_run_config(settings, scheduler=scheduler, dtype=dtype)  # one-line error if bad
    for variable, value in (("ARPO_SCHEDULER", scheduler and checked.scheduler), ("ARPO_DTYPE", dtype and checked.dtype)):
        if value:
            os.environ[variable] = value
