"""The SQL adapter of the inbox port: PostgreSQL, MySQL/MariaDB and SQLite.

Statements are built once per store and reused, so the per-task cost is SQLAlchemy's cached
execution plus one round trip. On PostgreSQL a first claim inserts the message row and the
status row in one statement (a data-modifying CTE); elsewhere it takes two.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime
from functools import cached_property
from typing import Any

from sqlalchemy import Connection, Insert, bindparam, case, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError

from celery_reliable.sanitize import storable

from .base import Status, StatusRow
from .bulk import is_any_of
from .database import Database
from .limits import literal_size, value_budget
from .tables import Tables

logger = logging.getLogger(__name__)


class SqlStore:
    """Inbox rows in a SQL database."""

    failures: tuple[type[BaseException], ...] = (DBAPIError,)

    def __init__(self, database: Database, tables: Tables) -> None:
        self.database = database
        self.tables = tables
        message, status = tables.inbox_message, tables.inbox_status
        pk = (status.c.message_id == bindparam("b_message_id")) & (
            status.c.handler_key == bindparam("b_handler_key")
        )
        fenced = pk & (status.c.version == bindparam("b_expected_version"))
        self._status_columns = (
            status.c.handler_key,
            status.c.status,
            status.c.attempts,
            status.c.version,
            status.c.processing_started_at,
            status.c.result,
        )
        self._get = select(*self._status_columns).where(pk)
        self._find_completed = (
            select(*self._status_columns)
            .where(status.c.message_id == bindparam("b_message_id"))
            .where(status.c.handler_key.in_(bindparam("b_handler_keys", expanding=True)))
            .where(status.c.status == Status.COMPLETED.value)
            .limit(1)
        )
        self._take_over = (
            update(status)
            .where(fenced)
            .values(
                status=Status.PROCESSING.value,
                attempts=status.c.attempts + bindparam("b_counted"),
                version=status.c.version + 1,
                owner=bindparam("b_owner"),
                processing_started_at=bindparam("b_now"),
            )
        )
        self._finish = (
            update(status)
            .where(fenced)
            .values(
                status=bindparam("b_new_status"),
                version=status.c.version + 1,
                completed_at=bindparam("b_completed_at"),
                result=bindparam("b_result"),
                last_error=bindparam("b_error"),
            )
        )
        self._renew = (
            update(status)
            .where(fenced & (status.c.status == Status.PROCESSING.value))
            .values(processing_started_at=bindparam("b_now"))
        )
        first_status: dict[str, Any] = {
            "message_id": bindparam("b_message_id"),
            "handler_key": bindparam("b_handler_key"),
            "status": Status.PROCESSING.value,
            "attempts": 1,
            "version": 1,
            "owner": bindparam("b_owner"),
            "processing_started_at": bindparam("b_now"),
        }
        first_message: dict[str, Any] = {
            "message_id": bindparam("b_m_message_id"),
            "task_name": bindparam("b_task_name"),
            "first_seen_at": bindparam("b_m_now"),
        }
        self._insert_message: Insert | None = None
        dialect = database.dialect
        if dialect == "postgresql":
            seen = (
                postgresql.insert(message).values(first_message).on_conflict_do_nothing().cte("m")
            )
            # RETURNING, not rowcount: psycopg reports -1 for a statement with a DML CTE.
            self._insert_status: Insert = (
                postgresql.insert(status)
                .values(first_status)
                .on_conflict_do_nothing()
                .returning(status.c.version)
                .add_cte(seen)
            )
        elif dialect == "sqlite":
            self._insert_message = (
                sqlite.insert(message).values(first_message).on_conflict_do_nothing()
            )
            self._insert_status = (
                sqlite.insert(status).values(first_status).on_conflict_do_nothing()
            )
        else:  # mysql, mariadb
            self._insert_message = insert(message).values(first_message).prefix_with("IGNORE")
            self._insert_status = insert(status).values(first_status).prefix_with("IGNORE")

    def insert_claim(
        self, message_id: str, handler_key: str, task_name: str, now: datetime, owner: str
    ) -> bool:
        params = {
            "b_message_id": message_id,
            "b_handler_key": handler_key,
            "b_owner": owner,
            "b_now": now,
            "b_m_message_id": message_id,
            "b_task_name": task_name,
            "b_m_now": now,
        }
        return self._insert_claim(params)

    def _insert_claim(self, params: dict[str, Any]) -> bool:
        """Run the first claim's statement(s) on their own, committed."""
        with self.database.claims.begin() as conn:
            if self._insert_message is not None:
                conn.execute(self._insert_message, params)
            result = conn.execute(self._insert_status, params)
            if result.returns_rows:
                return result.first() is not None
            return result.rowcount == 1

    def get_status(
        self, message_id: str, handler_key: str, *, connection: Connection | None = None
    ) -> StatusRow | None:
        params = {"b_message_id": message_id, "b_handler_key": handler_key}
        if connection is not None:
            row = connection.execute(self._get, params).first()
        else:
            with self.database.autocommit.connect() as conn:
                row = conn.execute(self._get, params).first()
        return None if row is None else _status_row(row)

    def find_completed(self, message_id: str, handler_keys: Sequence[str]) -> StatusRow | None:
        with self.database.autocommit.connect() as conn:
            row = conn.execute(
                self._find_completed,
                {"b_message_id": message_id, "b_handler_keys": list(handler_keys)},
            ).first()
        return None if row is None else _status_row(row)

    def take_over(
        self,
        message_id: str,
        handler_key: str,
        expected_version: int,
        now: datetime,
        owner: str,
        *,
        count_attempt: bool = True,
    ) -> bool:
        params = {
            "b_message_id": message_id,
            "b_handler_key": handler_key,
            "b_expected_version": expected_version,
            "b_owner": owner,
            "b_now": now,
            "b_counted": 1 if count_attempt else 0,
        }
        with self.database.claims.begin() as conn:
            return conn.execute(self._take_over, params).rowcount == 1

    def finish(
        self,
        message_id: str,
        handler_key: str,
        expected_version: int,
        status: Status,
        now: datetime,
        *,
        result: str | None = None,
        error: str | None = None,
        connection: Connection | None = None,
    ) -> bool:
        params = {
            "b_message_id": message_id,
            "b_handler_key": handler_key,
            "b_expected_version": expected_version,
            "b_new_status": status.value,
            "b_completed_at": now if status is Status.COMPLETED else None,
            "b_result": self._bounded(result, message_id, "result", cut=False),
            "b_error": self._bounded(storable(error), message_id, "error", cut=True),
        }
        if connection is not None:
            return connection.execute(self._finish, params).rowcount == 1
        return self._finish_alone(params)

    def _finish_alone(self, params: dict[str, Any]) -> bool:
        """Run the finishing update on its own, committed synchronously."""
        with self.database.autocommit.begin() as conn:
            return conn.execute(self._finish, params).rowcount == 1

    def renew_lease(
        self, message_id: str, handler_key: str, expected_version: int, now: datetime
    ) -> bool:
        params = {
            "b_message_id": message_id,
            "b_handler_key": handler_key,
            "b_expected_version": expected_version,
            "b_now": now,
        }
        with self.database.autocommit.begin() as conn:
            return conn.execute(self._renew, params).rowcount == 1

    @cached_property
    def _value_budget(self) -> int | None:
        """Read once: completions are the hot path."""
        return value_budget(self.database)

    def _bounded(self, text: str | None, message_id: str, what: str, *, cut: bool) -> str | None:
        """``text``, or less of it when one statement of the store cannot carry it all.

        On MySQL/MariaDB (``store/limits.py``) a completion with a result of megabytes would
        be refused like an outage and the message deferred for ever. A result is then not
        stored (a duplicate gets None, as for a result that is not JSON); an error is cut.
        """
        budget = self._value_budget
        if text is None or budget is None or literal_size(text) <= budget:
            return text
        logger.warning(
            "message %s: %s of %d characters is over the %d bytes one statement of the store "
            "takes (max_allowed_packet): %s",
            message_id,
            what,
            len(text),
            budget,
            "cut" if cut else "not stored",
        )
        return text[: budget // 4] if cut else None

    def lift_quarantine(
        self, message_ids: Sequence[str], handler_key: str | None, *, connection: Connection
    ) -> int:
        """Let poisoned pairs run again (attempts 0, new version); how many changed."""
        status = self.tables.inbox_status
        statement = (
            update(status)
            .where(is_any_of(status.c.message_id, "message_ids", self.database.dialect))
            .where(status.c.status == Status.POISONED.value)
            .values(status=Status.FAILED.value, attempts=0, version=status.c.version + 1)
        )
        if handler_key is not None:
            statement = statement.where(status.c.handler_key == handler_key)
        return int(connection.execute(statement, {"message_ids": list(message_ids)}).rowcount)

    def release_interrupted(self, message_id: str, handler_key: str, owner: str) -> bool:
        status = self.tables.inbox_status
        statement = (
            update(status)
            .where(status.c.message_id == message_id)
            .where(status.c.handler_key == handler_key)
            .where(status.c.status == Status.PROCESSING.value)
            .where(status.c.owner == owner)
            .values(
                status=Status.FAILED.value,
                attempts=case((status.c.attempts > 0, status.c.attempts - 1), else_=0),
                version=status.c.version + 1,
                last_error="interrupted by a worker shutdown (not counted)",
            )
        )
        with self.database.autocommit.begin() as conn:
            return conn.execute(statement).rowcount == 1

    def first_seen_at(self, message_id: str) -> datetime | None:
        message = self.tables.inbox_message
        query = select(message.c.first_seen_at).where(message.c.message_id == message_id)
        with self.database.autocommit.connect() as conn:
            value: datetime | None = conn.scalar(query)
        return value


def _status_row(row: Any) -> StatusRow:
    return StatusRow(
        handler_key=row.handler_key,
        status=Status(row.status),
        attempts=row.attempts,
        version=row.version,
        processing_started_at=row.processing_started_at,
        result=row.result,
    )
