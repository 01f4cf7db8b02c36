"""Tool calls kept like brain calls: refinements (PH2P, EDITOR, the regressor starting from the
loop's prompt), compressions of a full prompt, and the agent's steps.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

from arpo.storage.models import UtcDateTime

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "tool_calls",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("run_id", sa.String(length=12), nullable=False),
        sa.Column("iteration_index", sa.Integer(), nullable=True),
        sa.Column("tool", sa.String(length=32), nullable=False),
        sa.Column("caller", sa.String(length=16), nullable=False),
        sa.Column("arguments", sa.JSON(), nullable=True),
        sa.Column("seconds", sa.Float(), nullable=False),
        sa.Column("proposed", sa.JSON(), nullable=True),
        sa.Column("kept", sa.JSON(), nullable=True),
        sa.Column("outcome", sa.JSON(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", UtcDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_tool_calls_run_id"), "tool_calls", ["run_id"], unique=False)


def downgrade() -> None:
    op.drop_table("tool_calls")
