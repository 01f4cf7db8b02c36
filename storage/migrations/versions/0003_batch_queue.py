"""Batch items become a queue that several processes (or Ray workers) pull from: who holds an item,
and when it last said it is alive, so an item whose worker died is taken over instead of waiting.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

from arpo.storage.models import UtcDateTime

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("batch_items", sa.Column("claimed_by", sa.String(length=160), nullable=True))
    op.add_column("batch_items", sa.Column("heartbeat_at", UtcDateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("batch_items") as table:
        table.drop_column("heartbeat_at")
        table.drop_column("claimed_by")
