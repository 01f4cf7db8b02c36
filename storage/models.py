"""Every table of the history: runs, their iterations and candidate phrases, stored images, brain calls,
inversion trajectories, session turns and renders, batches and their items, evaluations and their cells.

All of them are declared here, on one `Base`, so creating the schema needs this module and nothing
imported for its side effects."""

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

RUN_STATUSES = ("running", "paused", "finished", "failed", "interrupted")
RUN_KINDS = ("invert", "session", "batch", "eval")
IMAGE_ROLES = ("reference", "generated", "render")
CANDIDATE_REASONS = (
    "selected", "no gain", "over budget", "duplicate", "not scored", "past the scorer's N-token window"
)

RUN_ID_LENGTH = 12
SHA256_LENGTH = 64
EVALUATION_ID_LENGTH = 12


def utc_now() -> datetime:
    """The current time, timezone-aware in UTC."""
    return datetime.now(timezone.utc)


class UtcDateTime(TypeDecorator):
    """A timestamp stored in UTC and always read back timezone-aware.

    SQLite keeps no zone, so without this a value written aware would come back naive and compare
    wrongly with `utc_now()`.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value
        return value.astimezone(timezone.utc).replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


class Base(DeclarativeBase):
    """Declarative base of every history table."""


class StoredImage(Base):
    """One image file in the content-addressed store (reference, generated or rendered)."""

    __tablename__ = "images"

    sha256: Mapped[str] = mapped_column(String(SHA256_LENGTH), primary_key=True)
    relative_path: Mapped[str] = mapped_column(String(512))
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    format: Mapped[str] = mapped_column(String(16), default="PNG")
    role: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utc_now)
    # `metadata` is taken by SQLAlchemy's declarative classes, so the attribute has another name.
    image_metadata: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSON, nullable=True)


class Run(Base):
    """One prompt-recovery run against one reference image."""

    __tablename__ = "runs"

    id: Mapped[str] = mapped_column(String(RUN_ID_LENGTH), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utc_now, index=True)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utc_now, onupdate=utc_now)
    status: Mapped[str] = mapped_column(String(16), default="running")
    kind: Mapped[str] = mapped_column(String(16), default="invert")
    reference_sha256: Mapped[str] = mapped_column(ForeignKey("images.sha256"))
    reference_name: Mapped[str] = mapped_column(String(512))
    config: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    best_prompt: Mapped[str | None] = mapped_column(Text, nullable=True)
    best_clip_i: Mapped[float | None] = mapped_column(Float, nullable=True)
    last_prompt: Mapped[str | None] = mapped_column(Text, nullable=True)
    stopped_because: Mapped[str | None] = mapped_column(Text, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)

    iterations: Mapped[list["Iteration"]] = relationship(
        back_populates="run", cascade="all, delete-orphan", order_by="Iteration.index"
    )
    tool_calls: Mapped[list["ToolCall"]] = relationship(back_populates="run", cascade="all, delete-orphan")
    brain_calls: Mapped[list["BrainCall"]] = relationship(
        back_populates="run", cascade="all, delete-orphan", order_by="BrainCall.id"
    )
    session_turns: Mapped[list["SessionTurn"]] = relationship(
        back_populates="run", cascade="all, delete-orphan", order_by="SessionTurn.position"
    )
    renders: Mapped[list["Render"]] = relationship(
        back_populates="run", cascade="all, delete-orphan", order_by="Render.id"
    )
    inversion_steps: Mapped[list["InversionStepRow"]] = relationship(
        back_populates="run", cascade="all, delete-orphan", order_by="InversionStepRow.id"
    )


class Iteration(Base):
    """One pass of the loop: the prompt tried, the image it produced, its scores and candidates."""

    __tablename__ = "iterations"
    __table_args__ = (UniqueConstraint("run_id", "index", name="uq_iteration_run_index"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    index: Mapped[int] = mapped_column(Integer)
    prompt: Mapped[str] = mapped_column(Text)
    seen_prompt: Mapped[str] = mapped_column(Text)
    token_count: Mapped[int] = mapped_column(Integer)
    token_budget: Mapped[int] = mapped_column(Integer)
    generated_sha256: Mapped[str] = mapped_column(ForeignKey("images.sha256"))
    clip_t: Mapped[float] = mapped_column(Float)
    clip_i: Mapped[float] = mapped_column(Float)
    differences: Mapped[str | None] = mapped_column(Text, nullable=True)
    note: Mapped[str | None] = mapped_column(Text, nullable=True)
    wall_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utc_now)
    # Source of the candidates and the phrases hygiene dropped (storage/records.py ProposalRecord).
    proposal: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)

    run: Mapped[Run] = relationship(back_populates="iterations")
    candidates: Mapped[list["Candidate"]] = relationship(
        back_populates="iteration",
        cascade="all, delete-orphan",
        passive_deletes=True,
        order_by="Candidate.position",
    )


class Candidate(Base):
    """A phrase proposed in one iteration, with its score and why it was or was not kept."""

    __tablename__ = "candidates"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    iteration_id: Mapped[int] = mapped_column(
        ForeignKey("iterations.id", ondelete="CASCADE"), index=True
    )
    position: Mapped[int] = mapped_column(Integer)
    phrase: Mapped[str] = mapped_column(Text)
    score: Mapped[float | None] = mapped_column(Float, nullable=True)
    selected: Mapped[bool] = mapped_column(Boolean, default=False)
    reason: Mapped[str] = mapped_column(String(64), default="not scored")

    iteration: Mapped[Iteration] = relationship(back_populates="candidates")


class BrainCall(Base):
    """One call to a language or vision-language model, kept so a run's cost is known."""

    __tablename__ = "brain_calls"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    iteration_index: Mapped[int | None] = mapped_column(Integer, nullable=True)
    role: Mapped[str] = mapped_column(String(64))
    provider: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(256))
    started_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utc_now)
    latency_s: Mapped[float] = mapped_column(Float, default=0.0)
    prompt_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    completion_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=1)
    """Which attempt of its call this request was (one row per HTTP request, failed ones included)."""
    ok: Mapped[bool] = mapped_column(Boolean, default=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    # Added after the first release: nullable, so storage/database.py adds them to older histories.
    call_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    """Shared by the requests of one call (its retries and format fallbacks)."""
    status_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    """HTTP status of the reply; None when none came (timeout, connection error, Ctrl-C)."""
    response_format: Mapped[str | None] = mapped_column(String(16), nullable=True)
    """json_schema, json_object or text as negotiated with the server; None when no JSON was wanted."""
    finish_reason: Mapped[str | None] = mapped_column(String(32), nullable=True)
    server: Mapped[str | None] = mapped_column(String(512), nullable=True)

    run: Mapped[Run] = relationship(back_populates="brain_calls")


class ToolCall(Base):
    """One call of a tool by the loop, the agent or a person: a refinement (PH2P, EDITOR, the
    regressor), a compression of the prompt, or an agent's step; kept like a brain call."""

    __tablename__ = "tool_calls"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    iteration_index: Mapped[int | None] = mapped_column(Integer, nullable=True)
    tool: Mapped[str] = mapped_column(String(32))
    caller: Mapped[str] = mapped_column(String(16), default="loop")
    """loop (the fixed graph), agent (the LLM chose it) or person (a session reply)."""
    arguments: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    seconds: Mapped[float] = mapped_column(Float, default=0.0)
    proposed: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    """Candidate phrases the tool produced."""
    kept: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    """Those that selection kept."""
    outcome: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    """What else the call came to (a compression's prompts and scores, an agent step's result)."""
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utc_now)

    run: Mapped[Run] = relationship(back_populates="tool_calls")


class InversionStepRow(Base):
    """One step of a prompt-inversion method's trajectory (PEZ, PH2P, EDITOR, ...) within a run."""

    __tablename__ = "inversion_steps"
    __table_args__ = (UniqueConstraint("run_id", "method", "step", name="uq_inversion_step"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    method: Mapped[str] = mapped_column(String(32))
    step: Mapped[int] = mapped_column(Integer)
    loss: Mapped[float | None] = mapped_column(Float, nullable=True)
    prompt: Mapped[str | None] = mapped_column(Text, nullable=True)
    seconds: Mapped[float] = mapped_column(Float, default=0.0)
    details: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)

    run: Mapped[Run] = relationship(back_populates="inversion_steps")


class SessionTurn(Base):
    """One reply a person gave in a conversational session, with what they were shown when replying."""

    __tablename__ = "session_turns"
    __table_args__ = (UniqueConstraint("run_id", "position", name="uq_session_turn"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    iteration_index: Mapped[int] = mapped_column(Integer)
    action: Mapped[str] = mapped_column(String(16))
    text: Mapped[str | None] = mapped_column(Text, nullable=True)
    phrases: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    shown: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utc_now)

    run: Mapped[Run] = relationship(back_populates="session_turns")


class Render(Base):
    """A novel image rendered from an edit of a run's recovered prompt (same seed and model)."""

    __tablename__ = "renders"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    source_prompt: Mapped[str] = mapped_column(Text)
    content: Mapped[str] = mapped_column(Text)
    style: Mapped[str] = mapped_column(Text)
    prompt: Mapped[str] = mapped_column(Text)
    edit: Mapped[str] = mapped_column(Text)
    seed: Mapped[int] = mapped_column(Integer)
    model: Mapped[str] = mapped_column(String(256))
    image_sha256: Mapped[str] = mapped_column(ForeignKey("images.sha256"))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utc_now)

    run: Mapped[Run] = relationship(back_populates="renders")


# Batches (arpo.storage.batches)


class BatchRow(Base):
    """One batch: a folder or manifest run with one configuration."""

    __tablename__ = "batches"

    id: Mapped[str] = mapped_column(String(RUN_ID_LENGTH), primary_key=True)
    source: Mapped[str] = mapped_column(Text)
    config: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    item_count: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utc_now)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utc_now, onupdate=utc_now)


class BatchItemRow(Base):
    """One image of a batch and the run recovering its prompt."""

    __tablename__ = "batch_items"

    key: Mapped[str] = mapped_column(String(SHA256_LENGTH), primary_key=True)
    batch_id: Mapped[str] = mapped_column(ForeignKey("batches.id", ondelete="CASCADE"), index=True)
    image: Mapped[str] = mapped_column(Text)
    run_id: Mapped[str | None] = mapped_column(ForeignKey("runs.id", ondelete="SET NULL"), nullable=True)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utc_now, onupdate=utc_now)
    claimed_by: Mapped[str | None] = mapped_column(String(160), nullable=True)
    """The worker running the item now (host:pid:name); None while no one is."""
    heartbeat_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    """When that worker last said it is alive; a claim older than the lease is taken over."""


# Evaluations (arpo.storage.evaluations)


class Evaluation(Base):
    """One benchmark: a data set, the methods and seeds compared, and where its reports go."""

    __tablename__ = "evaluations"

    id: Mapped[str] = mapped_column(String(EVALUATION_ID_LENGTH), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utc_now)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utc_now, onupdate=utc_now)
    status: Mapped[str] = mapped_column(String(16), default="running")
    manifest: Mapped[str] = mapped_column(Text)
    out_dir: Mapped[str] = mapped_column(Text, index=True)
    config: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class EvaluationCell(Base):
    """One method's prompt for one image and seed: its regenerated image, scores and cost."""

    __tablename__ = "evaluation_cells"
    __table_args__ = (
        UniqueConstraint("evaluation_id", "image_key", "method", "seed", name="uq_evaluation_cell"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    evaluation_id: Mapped[str] = mapped_column(ForeignKey("evaluations.id", ondelete="CASCADE"), index=True)
    image_key: Mapped[str] = mapped_column(String(512))
    method: Mapped[str] = mapped_column(String(64))
    seed: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    run_id: Mapped[str | None] = mapped_column(String(16), nullable=True)
    reference_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    prompt: Mapped[str | None] = mapped_column(Text, nullable=True)
    ground_truth: Mapped[str | None] = mapped_column(Text, nullable=True)
    generated_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    scores: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    """metric -> {"value": float, "model": str}."""
    wall_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    t2i_calls: Mapped[int] = mapped_column(Integer, default=0)
    brain_calls: Mapped[int] = mapped_column(Integer, default=0)
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    trajectory: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)
    """Scores along the method's own iterations (ARPO) or steps (inversion), for the report's plots."""
    details: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utc_now)
