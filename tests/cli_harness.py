"""Run the `arpo` command in-process, exactly as the console script does, and capture what it prints."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass

from arpo import SAMPLE_IMAGE  # noqa: F401  (re-exported for the CLI tests)
from arpo.app.cli import main


@dataclass
class CliOutcome:
    exit_code: int
    stdout: str
    stderr: str

    def json(self) -> dict:
        return json.loads(self.stdout)


def run_arpo(capsys, *args: str) -> CliOutcome:
    """Call the console entry point with ``args``; SystemExit becomes the outcome's exit code."""
    capsys.readouterr()  # drop anything printed before
    argv, sys.argv = sys.argv, ["arpo", *map(str, args)]
    try:
        main()
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    finally:
        sys.argv = argv
    captured = capsys.readouterr()
    return CliOutcome(code, captured.out, captured.err)
