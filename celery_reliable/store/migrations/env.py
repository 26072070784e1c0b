"""Alembic environment for the reliable store; driven by celery_reliable.store.migrate."""

from __future__ import annotations

from alembic import context
from sqlalchemy import text

tables = context.config.attributes["tables"]
engine = context.config.attributes["engine"]

with engine.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=tables.metadata,
        version_table=tables.version_table,
    )
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            # Two workers migrating at start-up: the second waits, then finds nothing to do.
            connection.execute(
                text("SELECT pg_advisory_xact_lock(hashtext(:name))"),
                {"name": tables.version_table},
            )
        context.run_migrations(tables=tables)
