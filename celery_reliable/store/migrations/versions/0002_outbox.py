"""The transactional outbox: complete serialized messages waiting to be relayed.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

from celery_reliable.store.tables import Key, LongBinary, LongText, RowId, UTCDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade(tables: Any) -> None:
    prefix = tables.prefix
    op.create_table(
        f"{prefix}outbox",
        sa.Column("id", RowId, primary_key=True, autoincrement=True),
        sa.Column("message_id", Key, nullable=False),
        sa.Column("task_id", sa.String(255), nullable=False),
        sa.Column("task_name", sa.String(255), nullable=False),
        sa.Column("queue", sa.String(255)),
        sa.Column("exchange", sa.String(255), nullable=False),
        sa.Column("routing_key", sa.String(255), nullable=False),
        sa.Column("body", LongBinary, nullable=False),
        sa.Column("content_type", sa.String(128), nullable=False),
        sa.Column("content_encoding", sa.String(64), nullable=False),
        sa.Column("headers", LongText, nullable=False),
        sa.Column("properties", LongText, nullable=False),
        sa.Column("ordering_key", Key),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("last_error", LongText),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("available_at", UTCDateTime(), nullable=False),
        sa.Column("claim_token", sa.String(64)),
        sa.Column("claimed_at", UTCDateTime()),
        sa.Column("sent_at", UTCDateTime()),
    )
    op.create_index(f"{prefix}outbox_due", f"{prefix}outbox", ["status", "available_at", "id"])


def downgrade(tables: Any) -> None:
    op.drop_table(f"{tables.prefix}outbox")
