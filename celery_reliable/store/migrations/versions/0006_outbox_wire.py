"""Outbox: the message prepared for the broker's transport, so the relay only moves bytes.

Rows written before this revision have no wire format; the relay publishes them from their
columns through kombu, as before.

On PostgreSQL the outbox also leaves a third of each page free (fillfactor 70): claiming a
row then rewrites it within its page without touching any index (a HOT update), which
made claims about twice as fast with outbox rows of a kilobyte or two. Pages already
full keep their rows until these are rewritten.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-24
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

from celery_reliable.store.tables import OUTBOX_FILLFACTOR as FILLFACTOR
from celery_reliable.store.tables import LongBinary

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade(tables: Any) -> None:
    table = f"{tables.prefix}outbox"
    op.add_column(table, sa.Column("wire_format", sa.String(16)))
    op.add_column(table, sa.Column("wire", LongBinary))
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"ALTER TABLE {table} SET (fillfactor = {FILLFACTOR})")


def downgrade(tables: Any) -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"ALTER TABLE {tables.prefix}outbox RESET (fillfactor)")
    for column in ("wire_format", "wire"):
        op.drop_column(f"{tables.prefix}outbox", column)
