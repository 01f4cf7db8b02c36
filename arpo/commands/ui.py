"""`arpo ui`: the web UI for sessions, served on this machine (127.0.0.1) unless told otherwise.

Served beyond loopback, the UI hands out every stored session, image and prompt, so it asks for a
login: `--auth USER:PASSWORD` or `--auth-file PATH` (one USER:PASSWORD a line), or `--no-auth` for a
deliberate open server. Gradio's own `auth=` login does the checking.
"""

from __future__ import annotations

import ipaddress
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from arpo import run_options as opt
from arpo.errors import InvalidInputError
from arpo.settings import ArpoSettings

UI_HELP = (
    "Serve the web UI: upload an image, pick models and brains, watch iterations arrive, reply as at the "
    "terminal (feedback, edit, run N, pin, unpin, ban, stop), browse and export past runs, resume sessions and "
    "render edits. Binds to 127.0.0.1; any other --host needs --auth, --auth-file or --no-auth."
)
LOOPBACK_NAMES = {"localhost", "ip6-localhost", "ip6-loopback"}


def register(app: typer.Typer) -> None:
    """Add the `ui` command to the arpo CLI."""
    app.command(name="ui", help=UI_HELP)(ui)


def ui(
    host: Annotated[str, typer.Option(help="Address to listen on; anything but loopback needs --auth, --auth-file or --no-auth.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 7860,
    auth: Annotated[Optional[str], typer.Option(help="USER:PASSWORD that the login page asks for.")] = None,
    auth_file: Annotated[Optional[Path], typer.Option(help="File of USER:PASSWORD lines, one per person allowed in.")] = None,
    no_auth: Annotated[bool, typer.Option("--no-auth", help="Serve a non-loopback address without a login (every session and image is visible).")] = False,
    models: opt.Models = None,
    brain: opt.Brain = None,
    vlm_brain: opt.VlmBrain = None,
    llm_brain: opt.LlmBrain = None,
    base_url: opt.BaseUrl = None,
    vlm_base_url: opt.VlmBaseUrl = None,
    llm_base_url: opt.LlmBaseUrl = None,
    vlm: opt.Vlm = None,
    llm: opt.Llm = None,
    framework: opt.Framework = None,
    steps: Annotated[Optional[int], typer.Option(help="Iterations allowed per 'run N' before asking again is forced (default: 10).")] = None,
    seed: opt.Seed = None,
    structured_output: opt.StructuredOutput = None,
    vlm_structured_output: opt.VlmStructuredOutput = None,
    llm_structured_output: opt.LlmStructuredOutput = None,
    max_tokens: opt.MaxTokens = None,
    vlm_max_tokens: opt.VlmMaxTokens = None,
    llm_max_tokens: opt.LlmMaxTokens = None,
    temperature: opt.Temperature = None,
    brain_seed: opt.BrainSeed = None,
    clip_model: opt.ClipModel = None,
    captioner: opt.CaptionerModel = None,
    device: opt.Device = None,
    scheduler: opt.Scheduler = None,
    dtype: opt.Dtype = None,
    db: opt.Database = None,
) -> None:
    logins = login_list(host, auth, auth_file, no_auth)  # refuse before anything loads
    # A local tool has no business reporting usage to Gradio's servers; the user can still opt in.
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from arpo.storage.history import History
    from arpo.web_ui import UiDefaults, build_ui

    settings = ArpoSettings()
    run_options = {
        "steps": steps, "structured_output": structured_output, "vlm_structured_output": vlm_structured_output,
        "llm_structured_output": llm_structured_output, "max_tokens": max_tokens, "vlm_max_tokens": vlm_max_tokens,
        "llm_max_tokens": llm_max_tokens, "temperature": temperature, "brain_seed": brain_seed,
        "clip_model": clip_model, "captioner": captioner, "device": device, "scheduler": scheduler, "dtype": dtype,
    }
    run_options = {name: value for name, value in run_options.items() if value is not None}
    # Check every flag now, as the other commands do, rather than at the first Start in the page.
    opt.build_run_config(
        settings, models=models, brain=brain, vlm_brain=vlm_brain, llm_brain=llm_brain, base_url=base_url,
        vlm_base_url=vlm_base_url, llm_base_url=llm_base_url, vlm=vlm, llm=llm, framework=framework, seed=seed,
        **run_options,
    )
    defaults = UiDefaults.from_settings(
        settings, models=models, brain=brain, vlm_brain=vlm_brain, llm_brain=llm_brain, base_url=base_url,
        vlm_base_url=vlm_base_url, llm_base_url=llm_base_url, vlm=vlm, llm=llm, framework=framework, seed=seed,
        run_options=run_options,
    )
    history = History.open(db or settings.db)
    app = build_ui(history, defaults)
    lock = f"login required ({len(logins)} user(s))" if logins else "no login"
    print(f"arpo ui on http://{host}:{port}, {lock} (Ctrl-C to stop)", file=sys.stderr)
    app.queue().launch(server_name=host, server_port=port, footer_links=[], quiet=True, auth=logins or None)


def login_list(host: str, auth: str | None, auth_file: Path | None, no_auth: bool) -> list[tuple[str, str]]:
    """The (user, password) pairs the login accepts; refuses a non-loopback host without any, unless
    --no-auth says an open server is meant."""
    if no_auth and (auth or auth_file):
        raise InvalidInputError("--no-auth contradicts --auth/--auth-file; give one or the other")
    logins = [_login(auth, "--auth")] if auth else []
    if auth_file is not None:
        try:
            lines = auth_file.read_text().splitlines()
        except OSError as problem:
            raise InvalidInputError(f"cannot read --auth-file {auth_file}: {problem.strerror or problem}") from None
        logins += [_login(line, f"{auth_file} line {number}") for number, line in enumerate(lines, 1)
                   if line.strip() and not line.lstrip().startswith("#")]
        if not logins:
            raise InvalidInputError(f"--auth-file {auth_file} holds no USER:PASSWORD line")
    if not logins and not no_auth and not is_loopback(host):
        raise InvalidInputError(
            f"--host {host} would show every session and image to the network without a login; "
            "add --auth USER:PASSWORD or --auth-file PATH (or --no-auth if that is really meant)"
        )
    return logins


def is_loopback(host: str) -> bool:
    """Whether `host` only listens on this machine (127.0.0.0/8, ::1, localhost)."""
    name = host.strip().strip("[]").lower()
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _login(text: str, where: str) -> tuple[str, str]:
    user, colon, password = text.strip().partition(":")
    if not colon or not user.strip() or not password:
        raise InvalidInputError(f"{where} must be USER:PASSWORD with both parts non-empty")
    return user.strip(), password
