"""The schema as arpo 0.1 created it before migrations existed: every table of the history.

A database made by that release has these tables but no `alembic_version`; opening it stamps this
revision (after adding any nullable column an even older release lacked) instead of creating them.

Revision ID: 0001
Revises: (none)
"""

import sqlalchemy as sa
from alembic import op

from arpo.storage.models import UtcDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table("batches",
        sa.Column("id", sa.String(length=12), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("item_count", sa.Integer(), nullable=False),
        sa.Column("created_at", UtcDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", UtcDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id")
    )
    op.create_table("evaluations",
        sa.Column("id", sa.String(length=12), nullable=False),
        sa.Column("created_at", UtcDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", UtcDateTime(timezone=True), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("manifest", sa.Text(), nullable=False),
        sa.Column("out_dir", sa.Text(), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id")
    )
    op.create_index(op.f("ix_evaluations_out_dir"), "evaluations", ["out_dir"], unique=False)
    op.create_table("images",
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("relative_path", sa.String(length=512), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("format", sa.String(length=16), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("created_at", UtcDateTime(timezone=True), nullable=False),
        sa.Column("metadata", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("sha256")
    )
    op.create_table("evaluation_cells",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("evaluation_id", sa.String(length=12), nullable=False),
        sa.Column("image_key", sa.String(length=512), nullable=False),
        sa.Column("method", sa.String(length=64), nullable=False),
        sa.Column("seed", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("run_id", sa.String(length=16), nullable=True),
        sa.Column("reference_sha256", sa.String(length=64), nullable=True),
        sa.Column("prompt", sa.Text(), nullable=True),
        sa.Column("ground_truth", sa.Text(), nullable=True),
        sa.Column("generated_sha256", sa.String(length=64), nullable=True),
        sa.Column("scores", sa.JSON(), nullable=True),
        sa.Column("wall_seconds", sa.Float(), nullable=False),
        sa.Column("t2i_calls", sa.Integer(), nullable=False),
        sa.Column("brain_calls", sa.Integer(), nullable=False),
        sa.Column("prompt_tokens", sa.Integer(), nullable=False),
        sa.Column("completion_tokens", sa.Integer(), nullable=False),
        sa.Column("trajectory", sa.JSON(), nullable=True),
        sa.Column("details", sa.JSON(), nullable=True),
        sa.Column("created_at", UtcDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["evaluation_id"], ["evaluations.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("evaluation_id", "image_key", "method", "seed", name="uq_evaluation_cell")
    )
    op.create_index(op.f("ix_evaluation_cells_evaluation_id"), "evaluation_cells", ["evaluation_id"], unique=False)
    op.create_table("runs",
        sa.Column("id", sa.String(length=12), nullable=False),
        sa.Column("created_at", UtcDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", UtcDateTime(timezone=True), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("reference_sha256", sa.String(length=64), nullable=False),
        sa.Column("reference_name", sa.String(length=512), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("best_prompt", sa.Text(), nullable=True),
        sa.Column("best_clip_i", sa.Float(), nullable=True),
        sa.Column("last_prompt", sa.Text(), nullable=True),
        sa.Column("stopped_because", sa.Text(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["reference_sha256"], ["images.sha256"], ),
        sa.PrimaryKeyConstraint("id")
    )
    op.create_index(op.f("ix_runs_created_at"), "runs", ["created_at"], unique=False)
    op.create_table("batch_items",
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("batch_id", sa.String(length=12), nullable=False),
        sa.Column("image", sa.Text(), nullable=False),
        sa.Column("run_id", sa.String(length=12), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("updated_at", UtcDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["batch_id"], ["batches.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("key")
    )
    op.create_index(op.f("ix_batch_items_batch_id"), "batch_items", ["batch_id"], unique=False)
    op.create_table("brain_calls",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("run_id", sa.String(length=12), nullable=False),
        sa.Column("iteration_index", sa.Integer(), nullable=True),
        sa.Column("role", sa.String(length=64), nullable=False),
        sa.Column("provider", sa.String(length=64), nullable=False),
        sa.Column("model", sa.String(length=256), nullable=False),
        sa.Column("started_at", UtcDateTime(timezone=True), nullable=False),
        sa.Column("latency_s", sa.Float(), nullable=False),
        sa.Column("prompt_tokens", sa.Integer(), nullable=True),
        sa.Column("completion_tokens", sa.Integer(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("ok", sa.Boolean(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("call_id", sa.String(length=32), nullable=True),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("response_format", sa.String(length=16), nullable=True),
        sa.Column("finish_reason", sa.String(length=32), nullable=True),
        sa.Column("server", sa.String(length=512), nullable=True),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id")
    )
    op.create_index(op.f("ix_brain_calls_run_id"), "brain_calls", ["run_id"], unique=False)
    op.create_table("inversion_steps",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("run_id", sa.String(length=12), nullable=False),
        sa.Column("method", sa.String(length=32), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("loss", sa.Float(), nullable=True),
        sa.Column("prompt", sa.Text(), nullable=True),
        sa.Column("seconds", sa.Float(), nullable=False),
        sa.Column("details", sa.JSON(), nullable=True),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("run_id", "method", "step", name="uq_inversion_step")
    )
    op.create_index(op.f("ix_inversion_steps_run_id"), "inversion_steps", ["run_id"], unique=False)
    op.create_table("iterations",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("run_id", sa.String(length=12), nullable=False),
        sa.Column("index", sa.Integer(), nullable=False),
        sa.Column("prompt", sa.Text(), nullable=False),
        sa.Column("seen_prompt", sa.Text(), nullable=False),
        sa.Column("token_count", sa.Integer(), nullable=False),
        sa.Column("token_budget", sa.Integer(), nullable=False),
        sa.Column("generated_sha256", sa.String(length=64), nullable=False),
        sa.Column("clip_t", sa.Float(), nullable=False),
        sa.Column("clip_i", sa.Float(), nullable=False),
        sa.Column("differences", sa.Text(), nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("wall_seconds", sa.Float(), nullable=False),
        sa.Column("created_at", UtcDateTime(timezone=True), nullable=False),
        sa.Column("proposal", sa.JSON(), nullable=True),
        sa.ForeignKeyConstraint(["generated_sha256"], ["images.sha256"], ),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("run_id", "index", name="uq_iteration_run_index")
    )
    op.create_index(op.f("ix_iterations_run_id"), "iterations", ["run_id"], unique=False)
    op.create_table("renders",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("run_id", sa.String(length=12), nullable=False),
        sa.Column("source_prompt", sa.Text(), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("style", sa.Text(), nullable=False),
        sa.Column("prompt", sa.Text(), nullable=False),
        sa.Column("edit", sa.Text(), nullable=False),
        sa.Column("seed", sa.Integer(), nullable=False),
        sa.Column("model", sa.String(length=256), nullable=False),
        sa.Column("image_sha256", sa.String(length=64), nullable=False),
        sa.Column("created_at", UtcDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["image_sha256"], ["images.sha256"], ),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id")
    )
    op.create_index(op.f("ix_renders_run_id"), "renders", ["run_id"], unique=False)
    op.create_table("session_turns",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("run_id", sa.String(length=12), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("iteration_index", sa.Integer(), nullable=False),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("text", sa.Text(), nullable=True),
        sa.Column("phrases", sa.JSON(), nullable=True),
        sa.Column("shown", sa.JSON(), nullable=True),
        sa.Column("created_at", UtcDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("run_id", "position", name="uq_session_turn")
    )
    op.create_index(op.f("ix_session_turns_run_id"), "session_turns", ["run_id"], unique=False)
    op.create_table("candidates",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("iteration_id", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("phrase", sa.Text(), nullable=False),
        sa.Column("score", sa.Float(), nullable=True),
        sa.Column("selected", sa.Boolean(), nullable=False),
        sa.Column("reason", sa.String(length=32), nullable=False),
        sa.ForeignKeyConstraint(["iteration_id"], ["iterations.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id")
    )
    op.create_index(op.f("ix_candidates_iteration_id"), "candidates", ["iteration_id"], unique=False)


def downgrade() -> None:
    op.drop_table("candidates")
    op.drop_table("session_turns")
    op.drop_table("renders")
    op.drop_table("iterations")
    op.drop_table("inversion_steps")
    op.drop_table("brain_calls")
    op.drop_table("batch_items")
    op.drop_table("runs")
    op.drop_table("evaluation_cells")
    op.drop_table("images")
    op.drop_table("evaluations")
    op.drop_table("batches")
