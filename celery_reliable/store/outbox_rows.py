"""Outbox rows for the relay: claim a batch, mark it sent, or record a failed publish.

Every write after the claim names the batch's claim token, so a relay that was too slow
and lost its rows to another (after ``reliable_stuck_threshold``) changes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Row, any_, bindparam, case, func, or_, select, update
from sqlalchemy.dialects.postgresql import ARRAY

from .database import Database
from .tables import Tables

PENDING, SENT, POISONED = "pending", "sent", "poisoned"


class OutboxRows:
    def __init__(self, database: Database, tables: Tables) -> None:
        self.database = database
        self.table = tables.outbox
        t = self.table
        #: What the relay reads of a claimed row: the message, where it goes, and its key's
        #: previous pending row (``previous``), by which a key's rows are taken as a run.
        self._publishing = (
            t.c.id,
            t.c.message_id,
            t.c.task_id,
            t.c.queue,
            t.c.exchange,
            t.c.routing_key,
            t.c.wire_format,
            t.c.wire,
            t.c.body,
            t.c.content_type,
            t.c.content_encoding,
            t.c.headers,
            t.c.properties,
            t.c.attempts,
            t.c.ordering_key,
        )

    def claim(
        self, limit: int, now: datetime, token: str, stale_before: datetime
    ) -> Sequence[Row[Any]]:
        """Take up to ``limit`` due rows (unclaimed, or claimed by a relay presumed dead).

        Oldest due first: in the order of the ``outbox_due`` index (status, due time, id),
        so finding a batch reads about a batch of index entries however long the backlog
        and however many rows wait for a later time (ordering by id alone would make the
        database collect and sort every due row, each batch).

        Rows of one ordering key are taken as a run: from the key's oldest pending row (its
        head), each following row only if the one before it is taken too and goes to the
        same exchange and routing key. So a key is published strictly in order, many rows
        per batch, and a head that fails (and backs off) holds back its own key only. The
        database only pre-selects rows whose key's head is free; the run is checked here,
        since a row locked by another relay's claim in progress is skipped, not seen.
        """
        t = self.table
        free = or_(t.c.claim_token.is_(None), t.c.claimed_at < stale_before)
        due = (
            select(*self._publishing, self._previous_of_key())
            .where(t.c.status == PENDING, t.c.available_at <= now, free)
            .where(or_(t.c.ordering_key.is_(None), self._head_is_free(now, stale_before)))
            .order_by(t.c.available_at, t.c.id)
            .limit(limit)
        )
        if self.database.dialect != "sqlite":  # SQLite: BEGIN IMMEDIATE already serialises
            due = due.with_for_update(skip_locked=True)
        with self.database.engine.begin() as conn:
            rows = _runs(conn.execute(due).all())
            if rows:
                conn.execute(
                    update(t)
                    .where(self._among(t.c.id, [r.id for r in rows]))
                    .values(claim_token=token, claimed_at=now)
                )
            return rows

    def _previous_of_key(self) -> Any:
        """The id of the pending row before this one in its ordering key, if any."""
        t, earlier = self.table, self.table.alias("before")
        previous = (
            select(func.max(earlier.c.id))
            .where(earlier.c.ordering_key == t.c.ordering_key, earlier.c.status == PENDING)
            .where(earlier.c.id < t.c.id)
            .scalar_subquery()
        )
        return case((t.c.ordering_key.is_(None), None), else_=previous).label("previous")

    def _head_is_free(self, now: datetime, stale_before: datetime) -> Any:
        """The oldest pending row of this row's key is due and not held by a live claim."""
        t, earlier, head = self.table, self.table.alias("earlier"), self.table.alias("head")
        head_id = (
            select(func.min(earlier.c.id))
            .where(earlier.c.ordering_key == t.c.ordering_key, earlier.c.status == PENDING)
            .correlate(t)  # two levels down: not found by SQLAlchemy's auto-correlation
            .scalar_subquery()
        )
        return (
            select(head.c.id)
            .where(head.c.id == head_id, head.c.available_at <= now)
            .where(or_(head.c.claim_token.is_(None), head.c.claimed_at < stale_before))
            .correlate(t)
            .exists()
        )

    def _among(self, column: Any, ids: Sequence[int]) -> Any:
        """``column IN ids``; on PostgreSQL one array parameter, so the statement's text
        (and its prepared plan) is the same for every batch whatever its size."""
        if self.database.dialect == "postgresql":
            return column == any_(bindparam("ids", list(ids), type_=ARRAY(BigInteger)))
        return column.in_(ids)

    def mark_sent(self, ids: Sequence[int], token: str, now: datetime) -> int:
        """Rows the broker confirmed, in one statement; returns how many this batch still held."""
        if not ids:
            return 0
        t = self.table
        with self.database.engine.begin() as conn:
            return conn.execute(
                update(t)
                .where(self._among(t.c.id, ids), t.c.claim_token == token)
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
                    .where(self._among(t.c.id, ids), t.c.claim_token == token)
                    .values(claim_token=None)
                )


def _poisoned_at(attempts: Any, max_attempts: int) -> Any:
    return case((attempts >= max_attempts, POISONED), else_=PENDING)


def _runs(candidates: Sequence[Any]) -> list[Row[Any]]:
    """The candidates that may be published together, in order (see ``claim``).

    A keyed row joins only behind its key's previous row, already taken: a row due before
    its predecessor (an earlier countdown) waits for a batch after it.
    """
    taken: dict[int, Row[Any]] = {}
    for row in candidates:
        before = taken.get(row.previous) if row.previous is not None else None
        if (
            row.ordering_key is None
            or row.previous is None  # the head of its key
            or (
                before is not None
                and (before.exchange, before.routing_key) == (row.exchange, row.routing_key)
            )
        ):
            taken[row.id] = row
    return list(taken.values())
