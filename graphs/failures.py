"""How a run that breaks is left: marked failed (or interrupted) with a one-line reason, resumable.

Used by every way a run executes (the loop, a session, an inversion method alone), so each says the
same thing about a failure and leaves the history in the same state.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from arpo.core.errors import ArpoError

if TYPE_CHECKING:
    from arpo.storage.history import History


class RunFailedError(ArpoError):
    """A run stopped by an error that is not arpo's own (a model, a library, the disk): the run is
    marked failed with the reason and stays resumable from its last checkpoint."""

    exit_code = 3


@contextmanager
def failures_recorded(history: History, run_id: str) -> Iterator[None]:
    """Mark the run failed (any error) or interrupted (Ctrl-C) in the history, and re-raise.

    An arpo error goes on as it is; any other exception becomes a one-line RunFailedError that names
    the step it happened in and how to continue (with ARPO_DEBUG set, the original is re-raised for
    its traceback).
    """
    try:
        yield
    except ArpoError as error:
        history.fail_run(run_id, str(error))
        raise
    except KeyboardInterrupt:
        history.set_status(run_id, "interrupted")
        raise
    except Exception as error:  # noqa: BLE001 - whatever broke, the run must not stay "running"
        reason = failure_reason(error)
        history.fail_run(run_id, reason)
        if os.environ.get("ARPO_DEBUG"):
            raise
        raise RunFailedError(f"run {run_id} failed: {reason}; {_how_to_continue(history, run_id)}") from error


def failure_reason(error: BaseException) -> str:
    """One line saying what failed and where: the graph node (from LangGraph's note), type and message."""
    message = " ".join(str(error).split()) or "(no message)"
    reason = f"{type(error).__name__}: {message}"
    if len(reason) > 300:
        reason = reason[:299] + "…"
    for note in getattr(error, "__notes__", ()):
        # LangGraph notes the task an exception escaped from: "During task with name 'select' and id ..."
        if note.startswith("During task with name '"):
            node = note.split("'")[1]
            return f"in step {node}: {reason}"
    return reason


def _how_to_continue(history: History, run_id: str) -> str:
    kind = history.get_run(run_id).kind
    if kind == "session":
        return f"once the cause is fixed, continue with: arpo session --resume {run_id}"
    return f"once the cause is fixed, continue with: arpo resume {run_id}"
