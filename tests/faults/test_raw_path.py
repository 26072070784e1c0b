"""The raw path's connections dying under it (PsycopgStore, ``store/dedicated.py``).

A backend killed with ``pg_terminate_backend`` (an administrator, a failover, an idle
timeout) fails the one statement that finds it dead, as the SQLAlchemy ``OperationalError``
that ``delivery/guard.py`` takes for an outage (so the message is deferred, never failed);
the next call runs on a fresh connection, and the store's other connections are recycled
with it.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy.exc import OperationalError

from celery_reliable.delivery.guard import is_infrastructure_failure
from celery_reliable.exceptions import ClaimUncertain
from celery_reliable.inbox import Inbox, Outcome
from celery_reliable.store import Database, PsycopgStore, Tables, dedicated
from celery_reliable.store.base import Status
from tests.support import backend_pid, postgres_store, terminate_backend

pytestmark = pytest.mark.services

NOW = datetime(2026, 1, 1, 12, tzinfo=timezone.utc)


@pytest.fixture
def pg(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Database, Tables]]:
    """A store whose connections are never pinged first: on a loaded machine the kill and
    the wait for it can outlast ``IDLE_PING``, and the ping would hide the failure these
    tests expect. The one test of the ping sets it to 0."""
    monkeypatch.setattr(dedicated, "IDLE_PING", 3600.0)
    with postgres_store() as store:
        yield store


def test_a_killed_claim_connection_fails_one_claim_as_an_outage_then_is_replaced(pg):
    database, tables = pg
    store = PsycopgStore(database, tables)
    assert store.insert_claim("before", "k", "task", NOW, "w1")
    killed = backend_pid(database, "claims")
    terminate_backend(database, killed)

    with pytest.raises(OperationalError) as caught:
        store.insert_claim("lost", "k", "task", NOW, "w1")
    assert is_infrastructure_failure(caught.value, with_body=True)  # an outage: deferred
    assert caught.value.connection_invalidated
    assert "INSERT INTO" in str(caught.value.statement)

    assert store.insert_claim("after", "k", "task", NOW, "w1")
    assert backend_pid(database, "claims") != killed


def test_through_the_inbox_a_killed_connection_is_an_uncertain_claim(pg):
    """The pipeline defers a ClaimUncertain with the version it may have taken."""
    database, tables = pg
    store = PsycopgStore(database, tables)
    inbox = Inbox(
        store,
        max_attempts=3,
        stuck_threshold=timedelta(minutes=5),
        renewal_grace=timedelta(seconds=25),
        store_results=True,
    )
    assert inbox.claim("before", "k", task_name="task", owner="w1").outcome is Outcome.RUN
    terminate_backend(database, backend_pid(database, "claims"))
    with pytest.raises(ClaimUncertain) as caught:
        inbox.claim("lost", "k", task_name="task", owner="w1")
    assert caught.value.version == 1
    assert isinstance(caught.value.__cause__, OperationalError)
    assert inbox.claim("after", "k", task_name="task", owner="w1").outcome is Outcome.RUN


def test_a_killed_mark_connection_fails_one_mark_then_is_replaced(pg):
    database, tables = pg
    store = PsycopgStore(database, tables)
    for message in ("a", "b"):
        assert store.insert_claim(message, "k", "task", NOW, "w1")
    assert store.finish("a", "k", 1, Status.FAILED, NOW, error="first")
    killed = backend_pid(database, "autocommit")
    terminate_backend(database, killed)
    with pytest.raises(OperationalError) as caught:
        store.finish("b", "k", 1, Status.COMPLETED, NOW)
    assert is_infrastructure_failure(caught.value)
    assert store.get_status("b", "k").status is Status.PROCESSING  # nothing committed
    assert store.finish("b", "k", 1, Status.COMPLETED, NOW)
    assert backend_pid(database, "autocommit") != killed


def test_a_disconnect_seen_by_the_claim_recycles_the_marks_connection_too(pg):
    """One outage costs one failed statement, not one per connection of the store."""
    database, tables = pg
    store = PsycopgStore(database, tables)
    assert store.insert_claim("running", "k", "task", NOW, "w1")
    for kind in ("claims", "autocommit"):
        terminate_backend(database, backend_pid(database, kind))
    with pytest.raises(OperationalError):
        store.insert_claim("lost", "k", "task", NOW, "w1")
    assert store.finish("running", "k", 1, Status.COMPLETED, NOW)  # first try, fresh connection


def test_a_connection_killed_while_idle_is_replaced_before_use(pg, monkeypatch):
    """After a quiet spell it is pinged first: an idle timeout costs no message."""
    database, tables = pg
    store = PsycopgStore(database, tables)
    assert store.insert_claim("before", "k", "task", NOW, "w1")
    killed = backend_pid(database, "claims")
    terminate_backend(database, killed)
    monkeypatch.setattr(dedicated, "IDLE_PING", 0.0)  # as if it had been idle long enough
    assert store.insert_claim("after", "k", "task", NOW, "w1")
    assert backend_pid(database, "claims") != killed
