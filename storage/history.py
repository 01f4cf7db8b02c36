"""The history: a small repository API over the database and the image store.

Each method opens its own short transaction and commits before returning, so a run interrupted at
any point keeps everything written up to then, and other processes see it at once. The one exception
is inside `History.writing_behind()`, where the loop runs: there its frequent writes go to a
background thread (storage/write_behind.py), and the loop's checkpoints settle them first, so a
killed run still resumes from a checkpoint whose writes are all stored.
"""

import enum
import json
import secrets
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import date, datetime
from functools import cached_property, partial
from pathlib import Path, PurePath
from typing import Any, TypeVar

from PIL import Image
from pydantic import BaseModel
from sqlalchemy import Engine, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload, sessionmaker

from arpo.core.brain_calls import BrainCallRecord
from arpo.core.errors import InvalidInputError
from arpo.core.run_config import REFINE_TOOLS
from arpo.storage import loop_writes
from arpo.storage.batches import BatchStore
from arpo.storage.database import create_database_engine
from arpo.storage.evaluations import EvaluationStore
from arpo.storage.image_store import ImageStore, PreparedImage, StoredImageRef
from arpo.storage.kept_resources import KeptResources
from arpo.storage.locations import checkpoint_path_for, default_database_url, default_image_root, postgres_conninfo_of
from arpo.storage.models import (
    IMAGE_ROLES,
    RUN_ID_LENGTH,
    RUN_STATUSES,
    BrainCall,
    Candidate,
    InversionStepRow,
    Iteration,
    Render,
    Run,
    SessionTurn,
    StoredImage,
    ToolCall,
    utc_now,
)
from arpo.storage.records import (
    COMPRESS_TOOL,
    InversionStepRecord,
    IterationRecord,
    RenderRecord,
    RunDetail,
    RunStatus,
    RunSummary,
    SessionTurnRecord,
    ToolCallRecord,
)
from arpo.storage.secrets_guard import secret_looking_keys
from arpo.storage.write_behind import WriteBehind

FAILURE_STATUSES = ("failed", "interrupted")

Kept = TypeVar("Kept")


class History:
    """Runs, iterations, candidates, images and brain calls, stored for browsing and resuming."""

    def __init__(self, engine: Engine, image_store: ImageStore) -> None:
        # Both stay inside: callers ask for images, runs, batches and evaluations by what they are, so
        # the database and the file layout can change without them noticing.
        self._engine = engine
        self._images = image_store
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        self._writes = WriteBehind()
        self._kept = KeptResources()

    def kept(
        self,
        name: str,
        open_it: Callable[[], Kept],
        close_it: Callable[[Kept], None],
        usable: Callable[[Kept], bool] | None = None,
    ) -> AbstractContextManager[Kept]:
        """A resource another layer keeps beside this history (the checkpoint saver), for one stretch
        of work (storage/kept_resources.py). It is opened on first use and shared by every later use.
        It is replaced when `usable` says it went bad, and closed by `close` once nobody is using it."""
        return self._kept.use(name, open_it, close_it, usable)

    @contextmanager
    def writing_behind(self, run_id: str | None = None) -> Iterator[None]:
        """Inside, this thread's frequent writes for `run_id` (images, iterations, brain and tool
        calls) are done by a background thread in the order given, overlapping the brain waits that
        follow them. Every other read or write of this history waits for them first, and so does a
        checkpoint (`settle`); leaving the block waits for them and raises the first of the run's
        that failed."""
        with self._writes.deferring_writes(run_id):
            yield

    def settle(self, run_id: str | None = None) -> None:
        """Wait for the writes handed to the background writer; raise the first that failed for
        `run_id` (by default the run this thread is writing behind), or for no run."""
        self._writes.settle(run_id)

    def _transaction(self) -> AbstractContextManager[Session]:
        """A read-write transaction that comes after every write already handed over."""
        self._writes.settle()
        return self._sessions.begin()

    def _reading(self) -> AbstractContextManager[Session]:
        """A session for reading that sees every write already handed over."""
        self._writes.settle()
        return self._sessions()

    @classmethod
    def open(cls, database_url: str | None = None, image_root: Path | None = None) -> "History":
        """Open the history at a database URL and image folder (arpo's defaults when not given)."""
        url = database_url or default_database_url()
        # Chosen before the engine creates a new database file, which would look like an old one.
        images = Path(image_root).expanduser() if image_root else default_image_root(url)
        return cls(create_database_engine(url), ImageStore(images))

    @property
    def postgres_conninfo(self) -> str | None:
        """The connection string of this history's PostgreSQL database, where its checkpoints live
        too; None for SQLite (see `checkpoint_path`)."""
        return postgres_conninfo_of(self._engine.url)

    @property
    def checkpoint_path(self) -> Path:
        """Where LangGraph checkpoints of this history's runs are kept (see `checkpoint_path_for`)."""
        return checkpoint_path_for(self._engine.url)

    def close(self) -> None:
        """Finish the writes handed over, then release the database connections. This includes
        whatever is `kept` beside this history, such as the checkpoint saver: a run still streaming
        on another thread keeps that until it is done."""
        try:
            self._writes.close()
        finally:
            try:
                self._kept.close()
            finally:
                self._engine.dispose()

    def __enter__(self) -> "History":
        return self

    def __exit__(self, *_exc_info: object) -> None:
        self.close()

    # Images

    def store_image(
        self, image: Image.Image, role: str, metadata: dict[str, Any] | None = None
    ) -> StoredImageRef:
        """Store an image file and its row; storing the same pixels again keeps the first row as is."""
        _require_choice(role, IMAGE_ROLES, "image role")
        prepared = self._images.prepare(image)
        self._writes.write(partial(self._store_image_now, prepared, role, metadata))
        return prepared.ref

    def _store_image_now(self, prepared: PreparedImage, role: str, metadata: dict[str, Any] | None) -> None:
        self._images.write(prepared)
        stored = prepared.ref
        try:
            with self._engine.begin() as connection:
                if not loop_writes.image_row_exists(connection, stored.sha256):
                    loop_writes.add_image_row(connection, {
                        "sha256": stored.sha256,
                        "relative_path": self._images.relative_path_for(stored.sha256),
                        "width": stored.width,
                        "height": stored.height,
                        "format": "PNG",
                        "role": role,
                        "metadata": _plain_json(metadata) if metadata else None,
                    })
        except IntegrityError:
            # Another process stored the same image between our check and our insert: same content,
            # so its row serves us equally well.
            pass

    def open_image(self, sha256: str) -> Image.Image:
        """Load a stored image by its hash (recently stored or opened images come from memory)."""
        if self._writes.deferring:
            # Its file may still be on its way to the disk; the pixels are the same.
            recent = self._images.open_recent(sha256)
            if recent is not None:
                return recent
        self._writes.settle()
        return self._images.open(sha256)

    def image_path(self, sha256: str) -> Path:
        """Where the file of an image with this hash is (or would be), to show a person or to copy."""
        self._writes.settle()
        return self._images.path_for(sha256)

    def has_image(self, sha256: str) -> bool:
        """Whether the image store holds an image with this hash."""
        self._writes.settle()
        return self._images.contains(sha256)

    # Batches and evaluations, kept in the same database

    @cached_property
    def batches(self) -> BatchStore:
        """Which images each batch holds and which run recovers each one."""
        return BatchStore(self._engine)

    @cached_property
    def evaluations(self) -> EvaluationStore:
        """Benchmarks and their (image, method, seed) cells."""
        return EvaluationStore(self._engine)

    # Writing runs

    def create_run(
        self,
        reference_sha256: str,
        reference_name: str,
        config: dict[str, Any],
        kind: str = "invert",
    ) -> str:
        """Start a run against a stored reference image and return its new 12-hex-digit id.

        Raises ValueError when the configuration holds anything that looks like a credential.
        """
        stored_config = _plain_json(config)
        leaked = secret_looking_keys(stored_config)
        if leaked:
            raise ValueError(
                "refusing to store a run configuration holding credentials under: " + ", ".join(leaked)
            )
        with self._transaction() as session:
            if session.get(StoredImage, reference_sha256) is None:
                raise ValueError(f"reference image {reference_sha256} is not stored; store it first")
            run_id = _unused_run_id(session)
            session.add(
                Run(
                    id=run_id,
                    status="running",
                    kind=kind,
                    reference_sha256=reference_sha256,
                    reference_name=reference_name,
                    config=stored_config,
                )
            )
        return run_id

    def record_iteration(self, run_id: str, record: IterationRecord) -> None:
        """Write one iteration and its candidates, replacing any earlier write of the same index."""
        self._writes.write(partial(self._record_iteration_now, run_id, record))

    def _record_iteration_now(self, run_id: str, record: IterationRecord) -> None:
        # Prepared statements rather than ORM objects: this runs for every node of every run, on the
        # writer thread, where the ORM's bookkeeping (and building SQL afresh) competed with the loop.
        with self._engine.begin() as connection:
            loop_writes.change_run(connection, run_id)  # the run exists, and changed now
            if not loop_writes.image_row_exists(connection, record.generated_sha256):
                raise ValueError(
                    f"generated image {record.generated_sha256} is not stored; store it first"
                )
            loop_writes.replace_iteration(
                connection,
                run_id,
                record.model_dump(exclude={"candidates", *_FROM_TOOL_CALLS}),
                [candidate.model_dump() for candidate in record.candidates],
            )

    def record_brain_calls(
        self, run_id: str, iteration_index: int | None, calls: Iterable[BrainCallRecord]
    ) -> None:
        """Store brain calls made for a run (and iteration). Each call is kept, retries included,
        because each one was really made and cost tokens."""
        self._writes.write(partial(self._record_brain_calls_now, run_id, iteration_index, list(calls)))

    def _record_brain_calls_now(self, run_id: str, iteration_index: int | None, calls: list[BrainCallRecord]) -> None:
        if not calls:
            return
        with self._engine.begin() as connection:  # prepared statements, as in _record_iteration_now
            loop_writes.require_run(connection, run_id)
            loop_writes.add_brain_calls(connection, [
                {"run_id": run_id, **call.model_dump(exclude={"iteration_index"}), "iteration_index": iteration_index}
                for call in calls
            ])

    def finish_run(
        self,
        run_id: str,
        *,
        best_prompt: str | None,
        best_clip_i: float | None,
        last_prompt: str | None,
        stopped_because: str | None,
    ) -> None:
        """Mark a run finished with its best and last prompts and why the loop stopped."""
        self._change_run(
            run_id,
            status="finished",
            best_prompt=best_prompt,
            best_clip_i=float(best_clip_i) if best_clip_i is not None else None,
            last_prompt=last_prompt,
            stopped_because=stopped_because,
            error=None,
        )

    def fail_run(self, run_id: str, error: str, status: str = "failed") -> None:
        """Mark a run failed (or interrupted) with the one-line reason."""
        _require_choice(status, FAILURE_STATUSES, "failure status")
        self._change_run(run_id, status=status, error=error)

    def set_status(self, run_id: str, status: RunStatus) -> None:
        """Change a run's status, e.g. back to "running" when it is resumed."""
        _require_choice(status, RUN_STATUSES, "run status")
        self._change_run(run_id, status=status)

    def _change_run(self, run_id: str, **columns) -> None:
        """Set columns of a run's row through the writer, like the run's other writes: behind the loop
        inside `writing_behind` (the start's "running" then holds nothing up; the end's is waited for
        by the last checkpoint either way), else at once."""
        self._writes.write(partial(self._change_run_now, run_id, columns))

    def _change_run_now(self, run_id: str, columns: dict) -> None:
        with self._engine.begin() as connection:  # prepared statements, as in _record_iteration_now
            loop_writes.change_run(connection, run_id, columns)

    # Reading runs

    def list_runs(self, limit: int = 50) -> list[RunSummary]:
        """The most recent runs, newest first."""
        if limit < 1:
            raise InvalidInputError(f"the number of runs to list must be at least 1, not {limit}")
        iteration_count = func.count(Iteration.id)
        query = (
            select(Run, iteration_count)
            .outerjoin(Iteration, Iteration.run_id == Run.id)
            .group_by(Run.id)
            .order_by(Run.created_at.desc(), Run.id.desc())
            .limit(limit)
        )
        with self._reading() as session:
            return [_summary(run, count) for run, count in session.execute(query).all()]

    def get_run(self, run_id: str) -> RunDetail:
        """A run with all its iterations and brain-call totals; accepts a unique id prefix."""
        with self._reading() as session:
            run = _run_by_id_or_prefix(session, run_id)
            iterations = _iteration_records(session, run.id)
            calls, prompt_tokens, completion_tokens = session.execute(
                select(
                    func.count(BrainCall.id),
                    func.coalesce(func.sum(BrainCall.prompt_tokens), 0),
                    func.coalesce(func.sum(BrainCall.completion_tokens), 0),
                ).where(BrainCall.run_id == run.id)
            ).one()
            summary = _summary(run, len(iterations))
            return RunDetail(
                **summary.model_dump(),
                config=run.config or {},
                reference_sha256=run.reference_sha256,
                last_prompt=run.last_prompt,
                error=run.error,
                iterations_detail=iterations,
                brain_calls=calls,
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
            )

    def brain_calls(self, run_id: str) -> list[BrainCallRecord]:
        """Every brain request of a run, failed ones included, oldest first; accepts an id prefix."""
        with self._reading() as session:
            run = _run_by_id_or_prefix(session, run_id)
            rows = session.scalars(
                select(BrainCall).where(BrainCall.run_id == run.id).order_by(BrainCall.id)
            ).all()
            return [BrainCallRecord.model_validate(row, from_attributes=True) for row in rows]

    def brain_tokens(self, run_id: str) -> int:
        """Prompt plus completion tokens the run's brain calls have cost so far (what the servers reported)."""
        with self._reading() as session:
            return int(session.scalar(
                select(func.coalesce(func.sum(func.coalesce(BrainCall.prompt_tokens, 0) + func.coalesce(BrainCall.completion_tokens, 0)), 0))
                .where(BrainCall.run_id == run_id)
            ))

    def record_tool_call(self, run_id: str, call: ToolCallRecord) -> None:
        """Keep one tool call of a run (each is kept: every one really ran and took its time)."""
        self._writes.write(partial(self._record_tool_call_now, run_id, call))

    def _record_tool_call_now(self, run_id: str, call: ToolCallRecord) -> None:
        with self._sessions.begin() as session:
            _exact_run(session, run_id)
            session.add(ToolCall(run_id=run_id, **call.model_dump(exclude={"created_at"})))

    def tool_calls(self, run_id: str) -> list[ToolCallRecord]:
        """Every tool call of a run, oldest first; accepts an id prefix."""
        with self._reading() as session:
            return _tool_call_records(session, _run_by_id_or_prefix(session, run_id).id)

    def record_inversion_steps(self, run_id: str, steps: Iterable[InversionStepRecord]) -> None:
        """Store steps of an inversion trajectory; a step written again (after a resume) replaces the old."""
        with self._transaction() as session:
            _exact_run(session, run_id)
            for record in steps:
                _drop_earlier(session, InversionStepRow, run_id=run_id, method=record.method, step=record.step)
                session.add(InversionStepRow(run_id=run_id, **record.model_dump()))

    def inversion_steps(self, run_id: str, method: str | None = None) -> list[InversionStepRecord]:
        """A run's inversion trajectory in step order, for one method or all; accepts an id prefix."""
        with self._reading() as session:
            run = _run_by_id_or_prefix(session, run_id)
            query = select(InversionStepRow).where(InversionStepRow.run_id == run.id)
            if method is not None:
                query = query.where(InversionStepRow.method == method)
            rows = session.scalars(query.order_by(InversionStepRow.method, InversionStepRow.step))
            return [InversionStepRecord.model_validate(row, from_attributes=True) for row in rows]

    def record_session_turn(self, run_id: str, turn: SessionTurnRecord) -> None:
        """Store a person's reply; writing the same position again (a resumed node) replaces it."""
        with self._transaction() as session:
            run = _exact_run(session, run_id)
            _drop_earlier(session, SessionTurn, run_id=run_id, position=turn.position)
            session.add(SessionTurn(run_id=run_id, **turn.model_dump(exclude={"created_at"})))
            run.updated_at = utc_now()

    def session_turns(self, run_id: str) -> list[SessionTurnRecord]:
        """A session's replies in order; accepts a unique id prefix."""
        with self._reading() as session:
            run = _run_by_id_or_prefix(session, run_id)
            rows = session.scalars(
                select(SessionTurn).where(SessionTurn.run_id == run.id).order_by(SessionTurn.position)
            )
            return [SessionTurnRecord.model_validate(row, from_attributes=True) for row in rows]

    def record_render(self, run_id: str, render: RenderRecord) -> RenderRecord:
        """Keep a novel image rendered from an edit of the run's prompt; returns it with its id."""
        with self._transaction() as session:
            _exact_run(session, run_id)
            if session.get(StoredImage, render.image_sha256) is None:
                raise ValueError(f"rendered image {render.image_sha256} is not stored; store it first")
            row = Render(run_id=run_id, **render.model_dump(exclude={"id", "created_at"}))
            session.add(row)
            session.flush()
            return RenderRecord.model_validate(row, from_attributes=True)

    def renders(self, run_id: str) -> list[RenderRecord]:
        """Every render made from a run, oldest first; accepts a unique id prefix."""
        with self._reading() as session:
            run = _run_by_id_or_prefix(session, run_id)
            rows = session.scalars(select(Render).where(Render.run_id == run.id).order_by(Render.id))
            return [RenderRecord.model_validate(row, from_attributes=True) for row in rows]

    def iterations(self, run_id: str) -> list[IterationRecord]:
        """A run's iterations in order; accepts a unique id prefix."""
        with self._reading() as session:
            return _iteration_records(session, _run_by_id_or_prefix(session, run_id).id)


def _drop_earlier(session: Session, row_type: type, **key: Any) -> None:
    """Delete the row with this key, if there is one: a resumed run may redo the node that wrote it,
    and the redo wins."""
    earlier = session.scalar(select(row_type).filter_by(**key))
    if earlier is not None:
        session.delete(earlier)
        session.flush()


def _require_choice(value: str, allowed: tuple[str, ...], what: str) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r}; expected one of {', '.join(allowed)}")


def _unused_run_id(session: Session) -> str:
    # 48 random bits: a clash is very unlikely, but checking costs one primary-key lookup.
    while True:
        candidate = secrets.token_hex(RUN_ID_LENGTH // 2)
        if session.get(Run, candidate) is None:
            return candidate


def _exact_run(session: Session, run_id: str) -> Run:
    run = session.get(Run, run_id)
    if run is None:
        raise InvalidInputError(f"no run with id {run_id}")
    return run


def _run_by_id_or_prefix(session: Session, run_id: str) -> Run:
    wanted = run_id.strip().lower()
    if not wanted:
        raise InvalidInputError("no run id given")
    run = session.get(Run, wanted)
    if run is not None:
        return run
    matches = session.scalars(
        select(Run).where(Run.id.startswith(wanted, autoescape=True)).limit(2)
    ).all()
    if not matches:
        raise InvalidInputError(f"no run with id {run_id}")
    if len(matches) > 1:
        raise InvalidInputError(f"run id prefix {run_id} matches more than one run; give more of it")
    return matches[0]


def _iteration_records(session: Session, run_id: str) -> list[IterationRecord]:
    rows = session.scalars(
        select(Iteration)
        .where(Iteration.run_id == run_id)
        .order_by(Iteration.index)
        .options(selectinload(Iteration.candidates))
    ).all()
    # Field names of the records and the tables are the same on purpose, so each maps onto the other.
    records = [IterationRecord.model_validate(row, from_attributes=True) for row in rows]
    return _with_tool_calls(records, _tool_call_records(session, run_id))


_FROM_TOOL_CALLS = {"refinement", "compression"}
"""IterationRecord fields read from the run's tool calls, not stored with the iteration."""


def _with_tool_calls(records: list[IterationRecord], calls: list[ToolCallRecord]) -> list[IterationRecord]:
    """Each iteration with its latest refinement and compression attached."""
    latest: dict[tuple[int | None, str], ToolCallRecord] = {}
    for call in calls:
        kind = "compression" if call.tool == COMPRESS_TOOL else "refinement" if call.tool in REFINE_TOOLS else None
        if kind is not None:
            latest[(call.iteration_index, kind)] = call
    attached = []
    for record in records:
        refinement = latest.get((record.index, "refinement"))
        compression = latest.get((record.index, "compression"))
        attached.append(record.model_copy(update={
            "refinement": refinement.summary() if refinement else None,
            "compression": (compression.outcome or {}) | {"seconds": compression.seconds} if compression else None,
        }))
    return attached


def _tool_call_records(session: Session, run_id: str) -> list[ToolCallRecord]:
    rows = session.scalars(select(ToolCall).where(ToolCall.run_id == run_id).order_by(ToolCall.id)).all()
    return [ToolCallRecord.model_validate(_tool_call_fields(row)) for row in rows]


def _tool_call_fields(row: ToolCall) -> dict[str, Any]:
    fields = {column: getattr(row, column) for column in ToolCallRecord.model_fields if hasattr(row, column)}
    fields["arguments"] = row.arguments or {}
    fields["proposed"] = row.proposed or []
    fields["kept"] = row.kept or []
    return fields


def _summary(run: Run, iteration_count: int) -> RunSummary:
    return RunSummary(
        id=run.id,
        created_at=run.created_at,
        status=run.status,
        kind=run.kind,
        reference_name=run.reference_name,
        best_prompt=run.best_prompt,
        best_clip_i=run.best_clip_i,
        iterations=iteration_count,
        stopped_because=run.stopped_because,
    )


def _plain_json(value: dict[str, Any]) -> dict[str, Any]:
    """A copy made only of JSON types, so what is stored is exactly what is read back."""
    try:
        return json.loads(json.dumps(value, default=_json_value_of))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"cannot store this value as JSON: {exc}") from None


def _json_value_of(value: Any) -> Any:
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=str)
    if hasattr(value, "item") and callable(value.item):
        # numpy and torch scalars
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON")
