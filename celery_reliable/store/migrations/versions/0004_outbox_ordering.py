"""Outbox: an index to find the oldest pending row of each ordering key.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23
"""

from __future__ import annotations

from typing import Any

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade(tables: Any) -> None:
    prefix = tables.prefix
    op.create_index(f"{prefix}outbox_ordering", f"{prefix}outbox", ["ordering_key", "status", "id"])


def downgrade(tables: Any) -> None:
    op.drop_index(f"{tables.prefix}outbox_ordering", f"{tables.prefix}outbox")
