"""PostgreSQL: notify relays when outbox rows are committed (LISTEN/NOTIFY).

A statement-level trigger, so an enqueue costs the caller no extra round trip, and the
notification is delivered at commit, never for a rolled-back transaction. Other databases
are polled and get nothing here.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

from __future__ import annotations

from typing import Any

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade(tables: Any) -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    prefix = tables.prefix
    op.execute(
        f"""
        CREATE FUNCTION {prefix}outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('{prefix}outbox', '');
            RETURN NULL;
        END $$
        """
    )
    op.execute(
        f"CREATE TRIGGER {prefix}outbox_notify AFTER INSERT ON {prefix}outbox "
        f"FOR EACH STATEMENT EXECUTE FUNCTION {prefix}outbox_notify()"
    )


def downgrade(tables: Any) -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(f"DROP TRIGGER {tables.prefix}outbox_notify ON {tables.prefix}outbox")
    op.execute(f"DROP FUNCTION {tables.prefix}outbox_notify()")
