"""The inbox on PostgreSQL through psycopg 3: its two hot statements on the driver itself.

A claim and a completion mark run once each per task. Here they run as psycopg prepared
statements on a :class:`~.dedicated.Dedicated` connection of the engines SqlStore uses for
them (``claims``, asynchronous commit; ``autocommit``, synchronous), each still one statement
committed on its own, so exactly as durable as through SQLAlchemy: only SQLAlchemy's cost
per statement goes. Everything else takes SqlStore's path, and so do a completion written in
the caller's transaction (``connection=``: the atomicity of ``self.transaction()`` is that
connection's commit) and a call that finds the dedicated connection busy (``-P threads``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import cached_property
from typing import Any, TypeVar

from .database import Database
from .dedicated import Dedicated, DriverStatement
from .sql import SqlStore
from .tables import Tables

T = TypeVar("T")


class PsycopgStore(SqlStore):
    """Inbox rows in PostgreSQL, the claim and the completion mark on raw psycopg."""

    def __init__(self, database: Database, tables: Tables) -> None:
        super().__init__(database, tables)
        self._claimer = database.dedicated("claims")
        self._marker = database.dedicated("autocommit")

    @cached_property
    def _claim_statement(self) -> DriverStatement:
        return DriverStatement(self._insert_status, self.database.claims.dialect)

    @cached_property
    def _finish_statement(self) -> DriverStatement:
        return DriverStatement(self._finish, self.database.autocommit.dialect)

    def _insert_claim(self, params: dict[str, Any]) -> bool:
        inserted = _run(self._claimer, self._claim_statement, params, _returned_a_row)
        return super()._insert_claim(params) if inserted is None else inserted

    def _finish_alone(self, params: dict[str, Any]) -> bool:
        finished = _run(self._marker, self._finish_statement, params, _changed_one_row)
        return super()._finish_alone(params) if finished is None else finished


def _run(
    dedicated: Dedicated,
    statement: DriverStatement,
    params: Mapping[str, Any],
    read: Callable[[Any], T],
) -> T | None:
    """``statement`` on ``dedicated``'s connection, prepared; None when that one is busy."""
    bound = statement.bind(params)

    def call(connection: Any) -> T:
        # A store behind a pooler that cannot keep them (prepare_threshold=None) said no.
        prepare = None if connection.prepare_threshold is None else True
        return read(connection.execute(statement.sql, bound, prepare=prepare))

    return dedicated.run(call, statement.sql, bound)


def _returned_a_row(cursor: Any) -> bool:
    """The claim's RETURNING: a row when this delivery inserted the pair."""
    return cursor.fetchone() is not None


def _changed_one_row(cursor: Any) -> bool:
    return bool(cursor.rowcount == 1)
