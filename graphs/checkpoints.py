"""LangGraph checkpoints, so an interrupted run can be finished by `arpo resume`: in the history's own
PostgreSQL database when it has one, else in a SQLite file beside the history."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from functools import partial, wraps
from pathlib import Path
from typing import TYPE_CHECKING

from langgraph.checkpoint.sqlite import SqliteSaver

from arpo.core.errors import InvalidInputError
from arpo.core.loop_activity import LOOP_ACTIVITY

if TYPE_CHECKING:
    from langgraph.checkpoint.base import BaseCheckpointSaver

    from arpo.storage.history import History

_SET_UP: set[str] = set()
"""PostgreSQL databases whose checkpoint tables this process has made sure of."""
_SET_UP_LOCK = threading.Lock()


def history_checkpointer(history: History) -> AbstractContextManager[BaseCheckpointSaver]:
    """The saver of `history`'s runs, for one stretch of work (a stream, a look at a run's state).

    Every run and session turn on one History shares it (each save takes the saver's own lock), so a
    batch or a session does not open a connection, make sure of the tables and close the connection
    again for every run or reply (about 1.5 ms each, measured in the loop benchmark). It is closed when
    the history closes and the last run using it is done. A PostgreSQL connection that dropped is
    replaced for the runs that come after (`still_connected`).
    """
    return history.kept("checkpointer", partial(open_checkpointer, history), close_soon, usable=still_connected)


def open_checkpointer(history: History) -> BaseCheckpointSaver:
    """A saver for the runs of `history`, on a connection of its own (close it with `.conn.close()`),
    that saves nothing before the history's own writes so far are stored."""
    conninfo = history.postgres_conninfo
    saver = _postgres_saver(conninfo) if conninfo is not None else sqlite_saver(history.checkpoint_path)
    return settle_before_saving(saver, history)


def settle_before_saving(saver: BaseCheckpointSaver, history: History) -> BaseCheckpointSaver:
    """Make `saver` wait for the history's background writes before each checkpoint or pending write.

    A checkpoint says which nodes are done; resuming from it skips them. So a node's iteration, brain
    calls and images must be stored before the checkpoint that follows it, or a run killed in between
    would resume past writes that never happened. A failed history write fails the save, and so the run.
    """
    for method in ("put", "put_writes"):
        setattr(saver, method, _after_settling(getattr(saver, method), history))
    return saver


def _after_settling(save: Callable, history: History) -> Callable:
    @wraps(save)
    def settled_save(*args, **kwargs):
        # LangGraph saves on a thread of its own: the run is named by the checkpoint's thread id.
        config = kwargs["config"] if "config" in kwargs else args[0]
        LOOP_ACTIVITY.wait_until_quiet()  # keep off the loop's own Python, briefly (core/loop_activity.py)
        history.settle(config.get("configurable", {}).get("thread_id"))
        return save(*args, **kwargs)

    return settled_save


def sqlite_saver(path: Path) -> SqliteSaver:
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


def _postgres_saver(conninfo: str) -> BaseCheckpointSaver:
    """LangGraph's PostgreSQL saver on a new connection (autocommit, rows as dicts, as it requires);
    its tables are made (`setup()`) the first time this process meets the database."""
    try:
        import psycopg
        from langgraph.checkpoint.postgres import PostgresSaver
        from psycopg.rows import dict_row
    except ImportError as missing:
        raise InvalidInputError(
            f"checkpoints in PostgreSQL need {missing.name}: pip install \"arpo[postgres]\""
        ) from None
    connection = psycopg.connect(conninfo, autocommit=True, prepare_threshold=0, row_factory=dict_row)
    saver = PostgresSaver(connection)
    with _SET_UP_LOCK:
        if conninfo not in _SET_UP:
            _set_up_alone(saver, connection)
            _SET_UP.add(conninfo)
    return saver


_SETUP_LOCK_KEY = 0x61727030  # "arp0": any fixed number, the same in every arpo process
"""PostgreSQL advisory lock taken while the checkpoint tables are made."""


def _set_up_alone(saver: BaseCheckpointSaver, connection, wait_s: float = 120.0) -> None:
    """`saver.setup()` while holding a database-wide lock: two processes that meet a new database at
    once would otherwise both record the same migration (a unique violation on checkpoint_migrations).

    The lock is tried, not waited for: setup builds an index CONCURRENTLY, which waits for every open
    transaction to end, and a session blocked inside `pg_advisory_lock` is one (PostgreSQL reports the
    pair as a deadlock). Between tries this session holds no transaction at all.
    """
    deadline = time.monotonic() + wait_s
    while not connection.execute("SELECT pg_try_advisory_lock(%s) AS held", (_SETUP_LOCK_KEY,)).fetchone()["held"]:
        if time.monotonic() > deadline:
            raise InvalidInputError(f"another process has been making the checkpoint tables for over {wait_s:g} s")
        time.sleep(0.05)
    try:
        saver.setup()
    finally:
        connection.execute("SELECT pg_advisory_unlock(%s)", (_SETUP_LOCK_KEY,))


def still_connected(saver: BaseCheckpointSaver) -> bool:
    """Whether a kept saver's connection can still serve. A SQLite file cannot drop. A PostgreSQL
    connection can: a server restart, a terminated backend, an idle timeout. psycopg notices only
    when the connection is next used, so this asks the server (one round trip a run) rather than
    letting every later run of a long-lived history (`arpo ui`, a long batch) fail on it."""
    if isinstance(saver, SqliteSaver):
        return True
    import psycopg

    connection = saver.conn
    if connection.closed or connection.broken:
        return False
    try:
        with saver.lock:
            connection.execute("SELECT 1")
    except psycopg.Error:
        return False
    return True


def close_soon(saver: BaseCheckpointSaver) -> None:
    """Close a saver's connection on a thread of its own. Closing the last connection to a SQLite file
    in WAL mode copies the log into the database first (milliseconds a run); every checkpoint is
    already committed, so nobody needs to wait for that, and a process that exits meanwhile leaves a
    log SQLite replays on the next open."""
    threading.Thread(target=_close_alone, args=(saver,), name="arpo-checkpoint-close", daemon=True).start()


def _close_alone(saver: BaseCheckpointSaver) -> None:
    # Under the saver's own lock: closing a sqlite3 connection while another thread executes on it
    # can crash the process, where a save that comes after the close fails with a plain error.
    with saver.lock:
        saver.conn.close()


def thread_config(run_id: str) -> dict:
    """The checkpoint thread of a run is its history id.

    `max_concurrency` 1: LangGraph starts a thread pool for every stream, and with it a thread for
    each checkpoint save that finds no idle one (five or six a run), each start a wait on the loop's
    path. The loop's graphs run one node at a time, so the only work that pool does is saving
    checkpoints and pending writes, which happen in order anyway; one thread does it all (measured:
    about 5 ms less framework time a run in the loop benchmark).
    """
    return {"configurable": {"thread_id": run_id}, "max_concurrency": 1}
