"""PsycopgStore's raw path: what the conformance tests cannot see from the rows alone.

The claim and the completion mark run as prepared statements on dedicated connections that
commit exactly as the engines they come from; a busy dedicated connection hands the call to
SQLAlchemy's path; dispose closes them. Outages are in tests/faults/test_raw_path.py, forks
in test_fork_safety.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Literal

import pytest
from sqlalchemy import text

from celery_reliable.store import Database, PsycopgStore, Tables, inbox_store
from celery_reliable.store.base import Status
from celery_reliable.testing import wait_for
from tests.support import backend_pid, postgres_store

pytestmark = pytest.mark.services

NOW = datetime(2026, 1, 1, 12, tzinfo=timezone.utc)


@pytest.fixture
def pg() -> Iterator[tuple[Database, Tables]]:
    with postgres_store() as store:
        yield store


def on_dedicated(
    database: Database, kind: Literal["claims", "autocommit"], sql: str
) -> list[tuple[object, ...]]:
    rows = database.dedicated(kind).run(lambda conn: conn.execute(sql).fetchall(), sql, {})
    assert rows is not None
    return rows


def test_postgresql_on_psycopg_gets_the_raw_path(pg):
    assert type(inbox_store(*pg)) is PsycopgStore


def test_claim_and_mark_are_prepared_on_connections_that_commit_as_their_engines(pg):
    database, tables = pg
    store = PsycopgStore(database, tables)
    assert store.insert_claim("m", "k", "task", NOW, "w1")
    assert store.finish("m", "k", 1, Status.COMPLETED, NOW, result="42")
    prepared = "SELECT statement FROM pg_prepared_statements"
    claims = [row[0] for row in on_dedicated(database, "claims", prepared)]
    marks = [row[0] for row in on_dedicated(database, "autocommit", prepared)]
    assert any(f"INSERT INTO {tables.prefix}inbox_status" in sql for sql in claims)
    assert any(f"UPDATE {tables.prefix}inbox_status" in sql for sql in marks)
    # The claim's commit is asynchronous (flushed by the mark's), the mark's synchronous.
    assert on_dedicated(database, "claims", "SHOW synchronous_commit") == [("off",)]
    assert on_dedicated(database, "autocommit", "SHOW synchronous_commit") == [("on",)]
    for kind in ("claims", "autocommit"):
        # Autocommit: each statement its own transaction, nothing left open after it.
        assert database.dedicated(kind).run(lambda conn: conn.autocommit, "autocommit", {})
    row = store.get_status("m", "k")
    assert (row.status, row.version, row.result) == (Status.COMPLETED, 2, "42")


def test_a_busy_dedicated_connection_hands_the_call_to_the_engine(pg):
    """Another thread (``-P threads``) holds it: the call neither waits nor fails."""
    database, tables = pg
    store = PsycopgStore(database, tables)

    def claim_and_mark_meanwhile(_connection: object) -> bool:
        return store.insert_claim("m", "k", "task", NOW, "w1") and store.finish(
            "m", "k", 1, Status.FAILED, NOW, error="boom"
        )

    for kind in ("claims", "autocommit"):
        assert database.dedicated(kind).run(claim_and_mark_meanwhile, "held", {}) is True
        assert store.get_status("m", "k").status is Status.FAILED
        with database.engine.begin() as conn:
            conn.execute(text(f"DELETE FROM {tables.prefix}inbox_status"))
    assert store.insert_claim("m", "k", "task", NOW, "w1")  # and free again afterwards


def test_dispose_closes_the_dedicated_connections(pg):
    database, tables = pg
    assert PsycopgStore(database, tables).insert_claim("m", "k", "task", NOW, "w1")
    pids = [backend_pid(database, "claims"), backend_pid(database, "autocommit")]
    database.dispose()
    alive = text("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(:pids)")
    with database.engine.connect() as conn:
        wait_for(lambda: conn.execute(alive, {"pids": pids}).scalar() == 0, 10, what="closed")
