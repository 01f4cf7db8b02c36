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

from arpo.app import options as opt
from arpo.core.errors import InvalidInputError
from arpo.core.settings import ArpoSettings, BrainOptions, HistoryOptions, LoopOptions, ModelOptions

UI_HELP = (
    "Serve the web UI: upload an image, pick models and brains, watch iterations arrive, reply as at the "
    "terminal (feedback, edit, run N, pin, unpin, ban, stop), browse and export past runs, resume sessions and "
    "render edits. Binds to 127.0.0.1; any other --host needs --auth, --auth-file or --no-auth."
)
LOOPBACK_NAMES = {"localhost", "ip6-localhost", "ip6-loopback"}


def register(app: typer.Typer) -> None:
    """Add the `ui` command to the arpo CLI."""
    app.command(name="ui", help=UI_HELP)(ui)


@opt.with_option_groups
def ui(
    host: Annotated[str, typer.Option(help="Address to listen on; anything but loopback needs --auth, --auth-file or --no-auth.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 7860,
    auth: Annotated[Optional[str], typer.Option(help="USER:PASSWORD that the login page asks for.")] = None,
    auth_file: Annotated[Optional[Path], typer.Option(help="File of USER:PASSWORD lines, one per person allowed in.")] = None,
    no_auth: Annotated[bool, typer.Option("--no-auth", help="Serve a non-loopback address without a login (every session and image is visible).")] = False,
    *,
    models: ModelOptions,
    brains: BrainOptions,
    loop: LoopOptions,
    store: HistoryOptions,
) -> None:
    logins = login_list(host, auth, auth_file, no_auth)  # refuse before anything loads
    # A local tool has no business reporting usage to Gradio's servers; the user can still opt in.
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from arpo.app.web_ui import UiDefaults, build_ui

    settings = ArpoSettings.read()
    settings.run_config(models, brains, loop)  # every flag checked now, as the other commands do, not at the first Start
    defaults = UiDefaults(settings, (models, brains, loop))
    history = opt.open_history(settings, store)
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
