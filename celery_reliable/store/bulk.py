"""Statements over many rows at once, in one round trip on every store.

``DeadLetters.replay_batch`` writes hundreds of outbox rows, lifts and marks per
transaction. SQLAlchemy's ``executemany`` cost about 57 µs per row there on PostgreSQL
(psycopg runs the INSERT once per row), and an ``IN`` list of hundreds of
literal values is a new statement for every size, compiled by SQLAlchemy and parsed by
psycopg each time. On PostgreSQL, the rows go in as one array per column (``unnest``) sent
in binary (with psycopg 3, the supported driver; another driver gets ``executemany``), and
``IN`` is ``= ANY`` of one array parameter. MariaDB's driver already turns
an ``executemany`` INSERT into one multi-row statement, and SQLite runs it in process.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import ColumnElement, Connection, Table, any_, bindparam, insert
from sqlalchemy.dialects.postgresql import ARRAY

_TYPE_MODIFIER = re.compile(r"\([^)]*\)")


def is_any_of(column: Any, name: str, dialect: str) -> ColumnElement[bool]:
    """``column IN :name``; on PostgreSQL one array parameter, so the statement's text (and
    its prepared plan) is the same for every number of values."""
    if dialect == "postgresql":
        return column == any_(bindparam(name, type_=ARRAY(column.type)))  # type: ignore[no-any-return]
    return column.in_(bindparam(name, expanding=True))  # type: ignore[no-any-return]


def insert_rows(connection: Connection, table: Table, rows: Sequence[Mapping[str, Any]]) -> None:
    """Insert ``rows`` (mappings with the same keys) with one statement.

    Values are given as to ``insert(table)``: the columns' types convert them first (aware
    datetimes to naive UTC, say), then PostgreSQL receives one binary array per column.
    """
    if not rows:
        return
    dialect = connection.dialect
    if dialect.name != "postgresql" or dialect.driver != "psycopg":  # %(name)b is psycopg 3's
        connection.execute(insert(table), list(rows))
        return
    names = list(rows[0])
    arrays, selected, params = [], [], {}
    for n, name in enumerate(names):
        column_type = table.c[name].type
        values = [row[name] for row in rows]
        process = column_type.dialect_impl(dialect).bind_processor(dialect)
        if process is not None:
            values = [process(value) for value in values]
        # Without its length: a cast to VARCHAR(255) would cut a longer value, where the
        # INSERT into the column refuses it, as executemany's would.
        sql_type = _TYPE_MODIFIER.sub("", column_type.compile(dialect=dialect))
        # %(name)b: psycopg sends the value, or the list as an array, in binary: no escaping.
        if n and all(value == values[0] for value in values):
            params[f"c{n}"] = values[0]  # the same in every row (a status, a queue): once
            selected.append(f"%(c{n})b::{sql_type}")
        else:
            params[f"c{n}"] = values
            arrays.append(f"%(c{n})b::{sql_type}[]")
            selected.append(f"c{n}")
    quote = dialect.identifier_preparer
    columns = ", ".join(quote.format_column(table.c[name]) for name in names)
    unnested = ", ".join(name for name in selected if not name.startswith("%"))
    statement = (
        f"INSERT INTO {quote.format_table(table)} ({columns}) "
        f"SELECT {', '.join(selected)} FROM unnest({', '.join(arrays)}) AS rows ({unnested})"
    )
    connection.exec_driver_sql(statement, params)
