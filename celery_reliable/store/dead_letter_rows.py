"""The port between the dead-letter store and whatever keeps its rows, and its SQL adapter.

``celery_reliable.dead_letters`` decides what an entry holds and how a replay is built; an
adapter only reads and writes rows. Rows come back as SQLAlchemy rows: attributes named
as the columns of ``Tables.dead_letter``. Writes that are part of a replay take the
caller's ``connection``, so that the outbox rows, the inbox's quarantine lifts and the
replay marks commit together.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import (
    ColumnElement,
    Connection,
    Table,
    and_,
    bindparam,
    delete,
    func,
    insert,
    select,
    true,
    update,
)
from sqlalchemy.exc import DBAPIError

from .bulk import insert_rows, is_any_of
from .database import Database
from .limits import value_budget
from .tables import Tables

#: What a batch replay reads of an entry when it has no transform, in this order: only
#: what a replay needs (not the traceback, not the raw body).
REPLAY_COLUMNS = (
    "id",
    "message_id",
    "task_name",
    "handler_key",
    "args",
    "kwargs",
    "headers",
    "delivery_info",
    "reason",
)

#: Deletes the rows of a table matching a condition, a batch per transaction; returns how
#: many (``Maintenance.delete_in_batches``).
BatchDelete = Callable[[Table, ColumnElement[bool]], int]


class EntryFilter(Protocol):
    """Which entries a statement covers (``celery_reliable.dead_letters.DeadLetterFilter``)."""

    @property
    def reason(self) -> str | None: ...
    @property
    def task_name(self) -> str | None: ...
    @property
    def since(self) -> datetime | None: ...
    @property
    def until(self) -> datetime | None: ...
    @property
    def replayed(self) -> bool | None: ...


@dataclass(frozen=True)
class RowStatistics:
    """Counts over every entry, and the time of the oldest one."""

    count: int
    messages: int  # distinct message ids: a replay that fails again adds an entry, not one
    by_reason: dict[str, int]
    by_task: dict[str, int]
    by_failure_group: dict[str, int]
    oldest: datetime | None


class DeadLetterRows(Protocol):
    """Row operations of the dead-letter store."""

    #: What a write raises when the store failed under it.
    failures: tuple[type[BaseException], ...]
    #: Each text column's maximum length in characters (None: unlimited).
    lengths: Mapping[str, int | None]

    def value_budget(self) -> int | None:
        """Bytes of values one INSERT may carry; None when the store has no limit."""

    def insert(self, row: Mapping[str, Any], *, connection: Any = None) -> int:
        """Store an entry (in ``connection``'s transaction when given); return its id."""

    def get(self, entry_id: int) -> Any | None:
        """The entry with this id, or None."""

    def select(self, matching: EntryFilter, limit: int, offset: int) -> list[Any]:
        """Matching entries, newest first."""

    def count(self, matching: EntryFilter, limit: int | None = None) -> int:
        """How many entries match (at most ``limit``)."""

    def statistics(self) -> RowStatistics:
        """Counts by reason, task and failure group, and the oldest entry's time."""

    def delete(self, entry_id: int) -> bool:
        """Delete one entry; False if there was none."""

    def delete_matching(self, matching: EntryFilter) -> int:
        """Delete the matching entries, a batch per transaction; how many."""

    def transaction(self) -> Any:
        """A context manager giving a connection in a transaction, committed on exit."""

    def lock(self, connection: Any, entry_id: int) -> Any | None:
        """Read and lock one whole entry for a replay, or None."""

    def last_id(self, matching: EntryFilter) -> int | None:
        """The highest id that matches: a batch covers only entries up to it."""

    def lock_chunk(
        self,
        connection: Any,
        matching: EntryFilter,
        after: int,
        last_id: int,
        size: int,
        *,
        whole: bool,
    ) -> Sequence[Any]:
        """Up to ``size`` matching entries with ids in (after, last_id], oldest first, locked.

        Rows another transaction holds are skipped. ``whole`` reads every column;
        otherwise :data:`REPLAY_COLUMNS`.
        """

    def record_replays(
        self,
        connection: Any,
        outbox_rows: Sequence[Mapping[str, Any]],
        entry_ids: Sequence[int],
        now: datetime,
    ) -> None:
        """Write the replays' outbox rows and mark the entries replayed (count + 1, ``now``)."""


class SqlDeadLetterRows:
    """Dead-letter rows in a SQL database (PostgreSQL, MySQL/MariaDB, SQLite)."""

    failures: tuple[type[BaseException], ...] = (DBAPIError,)

    def __init__(self, database: Database, tables: Tables, delete_in_batches: BatchDelete) -> None:
        self.database = database
        self.table = t = tables.dead_letter
        self._outbox = tables.outbox
        self._delete_in_batches = delete_in_batches
        self.lengths: Mapping[str, int | None] = {
            c.name: getattr(c.type, "length", None) for c in t.columns
        }
        self._mark_replayed = (
            update(t)
            .where(is_any_of(t.c.id, "ids", database.dialect))
            .values(
                replay_count=t.c.replay_count + 1,
                replayed_at=bindparam("now", type_=t.c.replayed_at.type),
            )
        )
        self._locks = database.dialect != "sqlite"  # SQLite: BEGIN IMMEDIATE serialises

    def value_budget(self) -> int | None:
        return value_budget(self.database)

    def _where(self, matching: EntryFilter) -> list[ColumnElement[bool]]:
        t = self.table
        clauses: list[ColumnElement[bool]] = []
        if matching.reason is not None:
            clauses.append(t.c.reason == str(matching.reason))  # a DeadLetterReason's value
        if matching.task_name is not None:
            clauses.append(t.c.task_name == matching.task_name)
        if matching.since is not None:
            clauses.append(t.c.dead_lettered_at >= matching.since)
        if matching.until is not None:
            clauses.append(t.c.dead_lettered_at < matching.until)
        if matching.replayed is True:
            clauses.append(t.c.replay_count > 0)
        elif matching.replayed is False:
            clauses.append(t.c.replay_count == 0)
        return clauses

    def insert(self, row: Mapping[str, Any], *, connection: Connection | None = None) -> int:
        statement = insert(self.table).values(dict(row))
        if connection is not None:
            return int(connection.execute(statement).inserted_primary_key[0])  # type: ignore[index]
        with self.database.engine.begin() as conn:
            return int(conn.execute(statement).inserted_primary_key[0])  # type: ignore[index]

    def get(self, entry_id: int) -> Any | None:
        with self.database.engine.connect() as conn:
            return conn.execute(select(self.table).where(self.table.c.id == entry_id)).first()

    def select(self, matching: EntryFilter, limit: int, offset: int) -> list[Any]:
        query = (
            select(self.table)
            .where(*self._where(matching))
            .order_by(self.table.c.id.desc())
            .limit(limit)
            .offset(offset)
        )
        with self.database.engine.connect() as conn:
            return list(conn.execute(query))

    def count(self, matching: EntryFilter, limit: int | None = None) -> int:
        where = self._where(matching)
        if limit is None:
            query = select(func.count()).select_from(self.table).where(*where)
        else:
            due = select(self.table.c.id).where(*where).limit(limit)
            query = select(func.count()).select_from(due.subquery())
        with self.database.engine.connect() as conn:
            return int(conn.scalar(query) or 0)

    def statistics(self) -> RowStatistics:
        t = self.table
        with self.database.engine.connect() as conn:

            def grouped(column: Any) -> dict[str, int]:
                rows = conn.execute(select(column, func.count()).group_by(column))
                return {str(key): int(n) for key, n in rows}

            return RowStatistics(
                count=int(conn.scalar(select(func.count()).select_from(t)) or 0),
                messages=int(conn.scalar(select(func.count(func.distinct(t.c.message_id)))) or 0),
                by_reason=grouped(t.c.reason),
                by_task=grouped(t.c.task_name),
                by_failure_group=grouped(t.c.failure_group),
                oldest=conn.scalar(select(func.min(t.c.dead_lettered_at))),
            )

    def delete(self, entry_id: int) -> bool:
        with self.database.engine.begin() as conn:
            return conn.execute(delete(self.table).where(self.table.c.id == entry_id)).rowcount == 1

    def delete_matching(self, matching: EntryFilter) -> int:
        return self._delete_in_batches(self.table, and_(true(), *self._where(matching)))

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        with self.database.engine.begin() as conn:
            yield conn

    def lock(self, connection: Connection, entry_id: int) -> Any | None:
        query = select(self.table).where(self.table.c.id == entry_id)
        if self._locks:
            query = query.with_for_update()
        return connection.execute(query).first()

    def last_id(self, matching: EntryFilter) -> int | None:
        with self.database.engine.connect() as conn:
            last = conn.scalar(select(func.max(self.table.c.id)).where(*self._where(matching)))
        return None if last is None else int(last)

    def lock_chunk(
        self,
        connection: Connection,
        matching: EntryFilter,
        after: int,
        last_id: int,
        size: int,
        *,
        whole: bool,
    ) -> Sequence[Any]:
        t = self.table
        columns = (t,) if whole else tuple(t.c[name] for name in REPLAY_COLUMNS)
        query = (
            select(*columns)
            .where(*self._where(matching), t.c.id > after, t.c.id <= last_id)
            .order_by(t.c.id)
            .limit(size)
        )
        if self._locks:  # an entry another batch or a single replay holds is being replayed
            query = query.with_for_update(skip_locked=True)
        return connection.execute(query).all()

    def record_replays(
        self,
        connection: Connection,
        outbox_rows: Sequence[Mapping[str, Any]],
        entry_ids: Sequence[int],
        now: datetime,
    ) -> None:
        insert_rows(connection, self._outbox, outbox_rows)
        connection.execute(self._mark_replayed, {"ids": list(entry_ids), "now": now})
