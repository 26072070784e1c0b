"""How many bytes of values one statement can carry, on stores that limit it.

MySQL and MariaDB refuse a statement over ``max_allowed_packet`` (16 MB by default) by
closing the connection. That looks like an unreachable store, which the library answers by
waiting and trying again: a row that can never fit would be retried for ever. Writers of
values that can be megabytes (dead letters, stored results) check against this first.
PostgreSQL and SQLite have no such limit here (a PostgreSQL value may be 1 GB).
"""

from __future__ import annotations

from typing import Any

from .database import Database

#: What a statement needs besides its big values: its text and the short columns.
STATEMENT_ROOM = 64 * 1024
#: Characters a MySQL driver escapes with a backslash in a literal: each takes two bytes.
_ESCAPED = (b"\x00", b"\n", b"\r", b"\x1a", b"\\", b"'", b'"')


def value_budget(database: Database) -> int | None:
    """Bytes of values one INSERT or UPDATE may carry; None when the store has no limit.

    Half of ``max_allowed_packet``, less :data:`STATEMENT_ROOM`, as measured: with a 16 MB
    ``max_allowed_packet``, MariaDB 10.11 and PyMySQL take an INSERT of an 8 MB value and
    refuse one a few kilobytes longer.
    """
    limit = database.packet_limit()
    return None if limit is None else limit // 2 - STATEMENT_ROOM


def literal_size(value: Any) -> int:
    """Bytes ``value`` takes as a literal in a MySQL statement (escapes included)."""
    if isinstance(value, str):
        value = value.encode("utf-8")
    if not isinstance(value, bytes):
        return 32
    return len(value) + sum(value.count(char) for char in _ESCAPED)
