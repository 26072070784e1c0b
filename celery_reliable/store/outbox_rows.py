"""Outbox rows for the relay: claim a batch, mark it sent, or record a failed publish.

Every write after the claim names the batch's claim token, so a relay that was too slow
and lost its rows to another (after ``reliable_stuck_threshold``) changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import Connection, bindparam, case, func, or_, select, update

from .bulk import is_any_of
from .database import Database
from .tables import Tables

PENDING, SENT, POISONED = "pending", "sent", "poisoned"
#: Keys whose head a claim looks up when it could take none of the oldest-due rows: enough
#: for progress (one free head is), few enough to stay cheap while relays race.
HEAD_LOOKUPS = 20


class Claimed(NamedTuple):
    """What the relay reads of a claimed row: the message, where it goes, its attempts.

    A plain tuple, since the relay reads a dozen fields of every row (a SQLAlchemy Row's
    attribute access costs ten times more). ``previous`` is the id of the pending row
    before this one in its ordering key, by which a key's rows are taken as a run.
    """

    id: int
    message_id: str
    task_id: str
    queue: str | None
    exchange: str
    routing_key: str
    wire_format: str | None
    wire: bytes | None
    body: bytes
    content_type: str
    content_encoding: str
    headers: str
    properties: str
    attempts: int
    ordering_key: str | None
    available_at: datetime  # when it became due: the relay logs how long it waited
    previous: int | None


class Batch(list[Claimed]):
    """The rows one claim took, in order.

    ``held_back``: the claim saw due rows but could take none of them, because the rows
    before them in their keys were being claimed by another relay at that moment (locked,
    so skipped, while their successors were seen). That is not "nothing due": the other
    claim ends within milliseconds, and a drain that returned here would leave due rows.
    """

    def __init__(self, rows: Iterable[Claimed] = (), *, held_back: bool = False) -> None:
        super().__init__(rows)
        self.held_back = held_back


class OutboxRows:
    def __init__(self, database: Database, tables: Tables) -> None:
        self.database = database
        self.table = t = tables.outbox
        # Built once: the relay runs them every batch.
        previous = _previous_of_key(t)
        due = (
            select(*(t.c[name] for name in Claimed._fields[:-1]), previous)
            .where(t.c.status == PENDING, t.c.available_at <= bindparam("now"), _free(t))
            .where(or_(t.c.ordering_key.is_(None), _head_is_free(t)))
            .limit(bindparam("limit"))
        )
        if database.dialect != "sqlite":  # SQLite: BEGIN IMMEDIATE already serialises
            due = due.with_for_update(skip_locked=True)
        self._due = due.order_by(t.c.available_at, t.c.id)
        ids = is_any_of(t.c.id, "ids", database.dialect)
        # The fallback of claim(): a key's head (one index lookup each), then those of them
        # that are due and free.
        self._head_of = _head_id(t, bindparam("key"))
        self._due_among = due.where(ids).order_by(t.c.id)
        self._take = (
            update(t).where(ids).values(claim_token=bindparam("token"), claimed_at=bindparam("now"))
        )
        held = t.c.claim_token == bindparam("token")
        self._sent = (
            update(t)
            .where(ids, held)
            .values(status=SENT, sent_at=bindparam("now"), claim_token=None)
        )
        self._release = update(t).where(ids, held).values(claim_token=None)

    def claim(self, limit: int, now: datetime, token: str, stale_before: datetime) -> Batch:
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
        since a row locked by another relay's claim in progress is skipped, not seen. When
        no row of the oldest-due batch can be taken, the heads of their keys are looked up.
        """
        with self.database.engine.begin() as conn:
            due = {"now": now, "stale": stale_before, "limit": limit}
            found = [Claimed._make(row) for row in conn.execute(self._due, due)]
            rows = _runs(found)
            if found and not rows:
                # Every row seen waits behind one outside this batch: a key's head due after
                # a batch of its own rows (it would stall the whole outbox, batch after
                # batch), or one being claimed by another relay (locked: skipped again).
                heads = self._heads(conn, found)
                if heads:
                    among = conn.execute(self._due_among, {**due, "ids": heads})
                    rows = _runs([Claimed._make(row) for row in among])
            if rows:
                conn.execute(self._take, {"ids": [r.id for r in rows], "token": token, "now": now})
            return Batch(rows, held_back=bool(found) and not rows)

    def _heads(self, conn: Connection, found: Sequence[Claimed]) -> list[int]:
        """The ids of the heads of the first :data:`HEAD_LOOKUPS` keys among ``found``."""
        keys = dict.fromkeys(row.ordering_key for row in found if row.ordering_key is not None)
        heads = (
            conn.execute(self._head_of, {"key": key}).scalar() for key in list(keys)[:HEAD_LOOKUPS]
        )
        return [head for head in heads if head is not None]

    def mark_sent(self, ids: Sequence[int], token: str, now: datetime) -> int:
        """Rows the broker confirmed, in one statement; returns how many this batch still held."""
        if not ids:
            return 0
        with self.database.engine.begin() as conn:
            return conn.execute(self._sent, {"ids": list(ids), "token": token, "now": now}).rowcount

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
            with self.database.engine.begin() as conn:
                conn.execute(self._release, {"ids": list(ids), "token": token})


def _poisoned_at(attempts: Any, max_attempts: int) -> Any:
    return case((attempts >= max_attempts, POISONED), else_=PENDING)


def _runs(candidates: list[Claimed]) -> list[Claimed]:
    """The candidates that may be published together, in order (see ``claim``).

    A keyed row joins only behind its key's previous row, already taken: a row due before
    its predecessor (an earlier countdown) waits for a batch after it.
    """
    taken: dict[int, Claimed] = {}
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


def _free(t: Any) -> Any:
    """Not held by a live claim (none, or one older than ``:stale``: a dead relay's)."""
    return or_(t.c.claim_token.is_(None), t.c.claimed_at < bindparam("stale"))


def _previous_of_key(t: Any) -> Any:
    """The id of the pending row before this one in its ordering key, if any."""
    before = t.alias("before")
    previous = (
        select(func.max(before.c.id))
        .where(before.c.ordering_key == t.c.ordering_key, before.c.status == PENDING)
        .where(before.c.id < t.c.id)
        .scalar_subquery()
    )
    return case((t.c.ordering_key.is_(None), None), else_=previous).label("previous")


def _head_id(t: Any, key: Any) -> Any:
    """The id of the oldest pending row of the ordering key ``key``: the key's head."""
    return select(func.min(t.c.id)).where(t.c.ordering_key == key, t.c.status == PENDING)


def _head_is_free(t: Any) -> Any:
    """The oldest pending row of this row's key is due and not held by a live claim."""
    earlier, head = t.alias("earlier"), t.alias("head")
    head_id = (
        _head_id(earlier, t.c.ordering_key)
        .correlate(t)  # two levels down: not found by SQLAlchemy's auto-correlation
        .scalar_subquery()
    )
    return (
        select(head.c.id)
        .where(head.c.id == head_id, head.c.available_at <= bindparam("now"), _free(head))
        .correlate(t)
        .exists()
    )
