"""Outbox rows for the relay: claim a batch, mark it sent, or record a failed publish.

Every write after the claim names the batch's claim token, so a relay that was too slow
and lost its rows to another (after ``reliable_stuck_threshold``) changes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Row, case, func, or_, select, update

from .database import Database
from .tables import Tables

PENDING, SENT, POISONED = "pending", "sent", "poisoned"


class OutboxRows:
    def __init__(self, database: Database, tables: Tables) -> None:
        self.database = database
        self.table = tables.outbox

    def claim(
        self, limit: int, now: datetime, token: str, stale_before: datetime
    ) -> Sequence[Row[Any]]:
        """Take up to ``limit`` due rows (unclaimed, or claimed by a relay presumed dead).

        A row with an ordering key is taken only while it is the oldest pending row of its
        key, so each key is published strictly in order, one message per batch, and a head
        that fails (and backs off) holds back its own key only.
        """
        t = self.table
        earlier = t.alias("earlier")
        head_of_key = (
            select(func.min(earlier.c.id))
            .where(earlier.c.ordering_key == t.c.ordering_key, earlier.c.status == PENDING)
            .scalar_subquery()
        )
        due = (
            select(t.c.id)
            .where(t.c.status == PENDING, t.c.available_at <= now)
            .where(or_(t.c.claim_token.is_(None), t.c.claimed_at < stale_before))
            .where(or_(t.c.ordering_key.is_(None), t.c.id == head_of_key))
            .order_by(t.c.id)
            .limit(limit)
        )
        if self.database.dialect != "sqlite":  # SQLite: BEGIN IMMEDIATE already serialises
            due = due.with_for_update(skip_locked=True)
        with self.database.engine.begin() as conn:
            ids = list(conn.scalars(due))
            if not ids:
                return []
            conn.execute(update(t).where(t.c.id.in_(ids)).values(claim_token=token, claimed_at=now))
            return conn.execute(select(t).where(t.c.id.in_(ids)).order_by(t.c.id)).all()

    def mark_sent(self, ids: Sequence[int], token: str, now: datetime) -> int:
        """Rows the broker confirmed; returns how many this batch still held."""
        if not ids:
            return 0
        t = self.table
        with self.database.engine.begin() as conn:
            return conn.execute(
                update(t)
                .where(t.c.id.in_(ids), t.c.claim_token == token)
                .values(status=SENT, sent_at=now, claim_token=None)
            ).rowcount

    def mark_failed(
        self, row_id: int, token: str, error: str, retry_at: datetime, max_attempts: int
    ) -> None:
        """Count a failed publish; retry at ``retry_at``, or poison the row at the limit."""
        t = self.table
        attempts = t.c.attempts + 1
        with self.database.engine.begin() as conn:
            conn.execute(
                update(t)
                .where(t.c.id == row_id, t.c.claim_token == token)
                .values(
                    attempts=attempts,
                    last_error=error,
                    available_at=retry_at,
                    claim_token=None,
                    status=_poisoned_at(attempts, max_attempts),
                )
            )

    def release(self, ids: Sequence[int], token: str) -> None:
        """Give rows back unchanged (the broker was unreachable: not the rows' fault)."""
        if ids:
            t = self.table
            with self.database.engine.begin() as conn:
                conn.execute(
                    update(t)
                    .where(t.c.id.in_(ids), t.c.claim_token == token)
                    .values(claim_token=None)
                )


def _poisoned_at(attempts: Any, max_attempts: int) -> Any:
    return case((attempts >= max_attempts, POISONED), else_=PENDING)
