"""Outbox: count how often stuck recovery published a message again, so it can stop.

``reliable_outbox_redeliver_unseen_after`` publishes again sent messages no inbox has seen.
A message no inbox will ever record (expired, for an unknown task, with an id the inbox
refuses) would otherwise be published every recovery cycle, forever. Recovery also skips
messages that were dead-lettered, which it finds by message id: hence the index.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade(tables: Any) -> None:
    prefix = tables.prefix
    op.add_column(
        f"{prefix}outbox",
        sa.Column("redeliveries", sa.Integer, nullable=False, server_default="0"),
    )
    op.create_index(f"{prefix}dead_letter_message", f"{prefix}dead_letter", ["message_id"])


def downgrade(tables: Any) -> None:
    prefix = tables.prefix
    op.drop_index(f"{prefix}dead_letter_message", f"{prefix}dead_letter")
    op.drop_column(f"{prefix}outbox", "redeliveries")
