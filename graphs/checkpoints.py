"""LangGraph checkpoints on SQLite, so an interrupted run can be finished by `arpo resume`."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from langgraph.checkpoint.sqlite import SqliteSaver


def open_checkpointer(path: Path) -> SqliteSaver:
    """A saver on a SQLite file in WAL mode, shareable by the threads of one process.

    synchronous=NORMAL: a commit reaches the WAL file (the operating system's cache) without waiting
    for the disk, which is what a killed process needs to resume at its last finished node; only a
    power cut or kernel crash can lose the last few checkpoints (the run then redoes those nodes,
    whose history writes are idempotent). Waiting for the disk at every node cost more than the node.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    connection = sqlite3.connect(str(path), check_same_thread=False, timeout=30)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=NORMAL")
    saver = SqliteSaver(connection)
    saver.setup()
    return saver


def thread_config(run_id: str) -> dict:
    """The checkpoint thread of a run is its history id."""
    return {"configurable": {"thread_id": run_id}}
