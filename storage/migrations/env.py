"""Alembic's entry into arpo's history schema: migrations run on the connection arpo hands over
(`arpo.storage.schema.upgrade_schema`), or, from the `alembic` command line, on the database that
ARPO_DB names (arpo's default SQLite file otherwise)."""

from alembic import context
from sqlalchemy import create_engine

from arpo.storage.models import Base


def run_migrations(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        # SQLite cannot ALTER a column: batch mode copies the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


given = context.config.attributes.get("connection")
if given is not None:
    run_migrations(given)
else:
    import os

    from arpo.storage.locations import default_database_url

    with create_engine(os.environ.get("ARPO_DB") or default_database_url()).begin() as connection:
        run_migrations(connection)
