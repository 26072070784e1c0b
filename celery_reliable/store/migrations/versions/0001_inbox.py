"""The idempotent inbox: one row per message, one status row per (message, handler key).

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

from celery_reliable.store.tables import Key, LongText, UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade(tables: Any) -> None:
    prefix = tables.prefix
    op.create_table(
        f"{prefix}inbox_message",
        sa.Column("message_id", Key, primary_key=True),
        sa.Column("task_name", sa.String(255), nullable=False),
        sa.Column("first_seen_at", UTCDateTime(), nullable=False),
    )
    op.create_table(
        f"{prefix}inbox_status",
        sa.Column("message_id", Key, primary_key=True),
        sa.Column("handler_key", Key, primary_key=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("owner", sa.String(255)),
        sa.Column("last_error", LongText),
        sa.Column("processing_started_at", UTCDateTime()),
        sa.Column("completed_at", UTCDateTime()),
        sa.Column("result", LongText),
    )


def downgrade(tables: Any) -> None:
    op.drop_table(f"{tables.prefix}inbox_status")
    op.drop_table(f"{tables.prefix}inbox_message")
