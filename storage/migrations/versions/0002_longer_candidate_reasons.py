"""Room for every candidate reason: "past the scorer's 77-token window" is 33 characters, one more
than the column held. SQLite never enforced the length; PostgreSQL refuses the row.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        return  # declared lengths mean nothing to SQLite; copying the table would buy nothing
    op.alter_column("candidates", "reason", type_=sa.String(64), existing_type=sa.String(32), existing_nullable=False)


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        return
    op.alter_column("candidates", "reason", type_=sa.String(32), existing_type=sa.String(64), existing_nullable=False)
