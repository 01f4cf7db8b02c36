"""Where arpo keeps its files when nobody says otherwise: one home folder, `$ARPO_HOME`."""

import os
from pathlib import Path

HOME_ENV_VAR = "ARPO_HOME"


def arpo_home() -> Path:
    """The folder that holds arpo's history and caches: `$ARPO_HOME`, else `~/.local/share/arpo`;
    created if missing."""
    configured = os.environ.get(HOME_ENV_VAR)
    home = Path(configured).expanduser() if configured else Path.home() / ".local" / "share" / "arpo"
    home.mkdir(parents=True, exist_ok=True)
    return home
