"""The dead-letter store: failed messages kept whole, for review and replay.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

from celery_reliable.store.tables import Key, LongBinary, LongText, RowId, UTCDateTime

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade(tables: Any) -> None:
    prefix = tables.prefix
    table = f"{prefix}dead_letter"
    op.create_table(
        table,
        sa.Column("id", RowId, primary_key=True, autoincrement=True),
        sa.Column("message_id", Key, nullable=False),
        sa.Column("task_id", sa.String(255)),
        sa.Column("task_name", sa.String(255)),
        sa.Column("handler_key", Key),
        sa.Column("args", LongText),
        sa.Column("kwargs", LongText),
        sa.Column("headers", LongText, nullable=False),
        sa.Column("delivery_info", LongText, nullable=False),
        sa.Column("raw_body", LongBinary),
        sa.Column("content_type", sa.String(128)),
        sa.Column("content_encoding", sa.String(64)),
        sa.Column("reason", sa.String(64), nullable=False),
        sa.Column("detector", sa.String(255)),
        sa.Column("exception_type", sa.String(255)),
        sa.Column("exception_message", LongText),
        sa.Column("traceback", LongText),
        sa.Column("failure_group", sa.String(255)),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("first_seen_at", UTCDateTime()),
        sa.Column("dead_lettered_at", UTCDateTime(), nullable=False),
        sa.Column("hostname", sa.String(255)),
        sa.Column("replay_count", sa.Integer, nullable=False),
        sa.Column("replayed_at", UTCDateTime()),
    )
    op.create_index(f"{prefix}dead_letter_time", table, ["dead_lettered_at"])
    op.create_index(f"{prefix}dead_letter_reason", table, ["reason", "dead_lettered_at"])
    op.create_index(f"{prefix}dead_letter_task", table, ["task_name", "dead_lettered_at"])


def downgrade(tables: Any) -> None:
    op.drop_table(f"{tables.prefix}dead_letter")
