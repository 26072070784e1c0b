"""The contract of each store port, run against every adapter of it on every database.

A port is what the core needs of the rows it keeps (``store/base.py``'s ``InboxStore``; the
relay's outbox rows); an adapter keeps them somewhere. Each adapter is built from a
migrated store (its ``Database`` and ``Tables``) alone. A new adapter of a port is one more
entry in that port's list below and must pass the port's tests unchanged; a new port is a
list, its fixture and its contract. Everything is read back through the adapter itself or
the table, never assumed: these tests are what lets the core trust any adapter alike.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import delete, insert, select
from sqlalchemy.exc import DBAPIError

from celery_reliable.dead_letters import DeadLetterFilter, FailedMessage
from celery_reliable.dead_letters.fitting import entry_row, fit_row
from celery_reliable.store import (
    Database,
    PsycopgStore,
    SqlStore,
    Tables,
    build_tables,
    migrate,
)
from celery_reliable.store.base import Status
from celery_reliable.store.dead_letter_rows import SqlDeadLetterRows
from celery_reliable.store.outbox_rows import OutboxRows

#: Each port's adapters: the classes built with ``(database, tables)``.
INBOX_STORES: list[type[Any]] = [SqlStore, PsycopgStore]
#: Adapters for one database only (by dialect name); the others serve every database.
ONLY_ON: dict[type[Any], str] = {PsycopgStore: "postgresql"}
OUTBOX_ROWS: list[type[Any]] = [OutboxRows]
#: Built with ``(database, tables, delete_in_batches)``.
DEAD_LETTER_ROWS: list[type[Any]] = [SqlDeadLetterRows]

NOW = datetime(2026, 1, 1, 12, 0, 0, 250_000, tzinfo=timezone.utc)  # sub-second on purpose
LATER = NOW + timedelta(minutes=5)
LATER_GAP = timedelta(hours=1)


@dataclass(frozen=True)
class Store:
    database: Database
    tables: Tables


@pytest.fixture(scope="module")
def migrated(module_db: tuple[str, str]) -> Iterator[Store]:
    """One migrated store per database for the module; ``store`` empties it per test."""
    url, prefix = module_db
    store = Store(Database(url), build_tables(prefix))
    migrate.upgrade(store.database, store.tables)
    yield store
    store.database.dispose()


@pytest.fixture
def store(migrated: Store) -> Iterator[Store]:
    yield migrated
    with migrated.database.engine.begin() as conn:
        for table in reversed(migrated.tables.metadata.sorted_tables):
            conn.execute(delete(table))


def serves(cls: type[Any], database: Database) -> bool:
    return ONLY_ON.get(cls, database.dialect) == database.dialect


@pytest.fixture(params=INBOX_STORES, ids=lambda cls: cls.__name__)
def inbox(request: pytest.FixtureRequest, store: Store) -> Any:
    if not serves(request.param, store.database):
        pytest.skip(f"{request.param.__name__} serves {ONLY_ON[request.param]} only")
    return request.param(store.database, store.tables)


@pytest.fixture(params=OUTBOX_ROWS, ids=lambda cls: cls.__name__)
def rows(request: pytest.FixtureRequest, store: Store) -> Any:
    return request.param(store.database, store.tables)


# The inbox port ----------------------------------------------------------------------------


def claim(inbox: Any, message_id: str = "m", key: str = "k", owner: str = "w1") -> None:
    assert inbox.insert_claim(message_id, key, "task", NOW, owner)


def test_a_first_claim_is_attempt_1_version_1_and_only_once(inbox):
    assert inbox.get_status("m", "k") is None
    assert inbox.first_seen_at("m") is None
    assert inbox.insert_claim("m", "k", "task", NOW, "w1")
    assert not inbox.insert_claim("m", "k", "task", LATER, "w2")  # the pair exists
    row = inbox.get_status("m", "k")
    assert (row.handler_key, row.status, row.attempts, row.version) == (
        "k",
        Status.PROCESSING,
        1,
        1,
    )
    assert row.processing_started_at == NOW
    assert inbox.first_seen_at("m") == NOW


def test_handler_keys_are_claimed_apart_and_the_message_keeps_its_first_sight(inbox):
    claim(inbox, key="a")
    assert inbox.insert_claim("m", "b", "task", LATER, "w2")  # another handler, same message
    assert inbox.get_status("m", "b").version == 1
    assert inbox.first_seen_at("m") == NOW
    assert inbox.get_status("M", "a") is None  # message ids are case-sensitive


def test_complete_is_fenced_by_version_and_keeps_the_result(inbox):
    claim(inbox)
    assert not inbox.finish("m", "k", 2, Status.COMPLETED, LATER, result='"late"')  # stale
    assert inbox.get_status("m", "k").status is Status.PROCESSING
    assert inbox.finish("m", "k", 1, Status.COMPLETED, LATER, result='"done"')
    row = inbox.get_status("m", "k")
    assert (row.status, row.version, row.result) == (Status.COMPLETED, 2, '"done"')
    assert not inbox.finish("m", "k", 1, Status.FAILED, LATER)  # already moved on
    assert inbox.find_completed("m", ["other", "k"]).handler_key == "k"
    assert inbox.find_completed("m", ["other"]) is None


def test_a_failed_run_is_taken_over_with_one_more_attempt(inbox):
    claim(inbox)
    assert inbox.finish("m", "k", 1, Status.FAILED, NOW, error="ValueError: boom")
    assert inbox.get_status("m", "k").status is Status.FAILED
    assert not inbox.take_over("m", "k", 1, LATER, "w2")  # fenced: the row is at version 2
    assert inbox.take_over("m", "k", 2, LATER, "w2")
    row = inbox.get_status("m", "k")
    assert (row.status, row.attempts, row.version) == (Status.PROCESSING, 2, 3)
    assert row.processing_started_at == LATER
    assert inbox.take_over("m", "k", 3, LATER, "w3", count_attempt=False)  # never ran
    assert (inbox.get_status("m", "k").attempts, inbox.get_status("m", "k").version) == (2, 4)


def test_quarantine_holds_until_lifted_in_the_callers_transaction(inbox, store):
    for key in ("a", "b"):
        claim(inbox, key=key)
        assert inbox.finish("m", key, 1, Status.POISONED, NOW, error="crashed its worker")
    claim(inbox, "other")
    with store.database.engine.begin() as conn:
        assert inbox.lift_quarantine(["m", "other"], "a", connection=conn) == 1
    row = inbox.get_status("m", "a")
    assert (row.status, row.attempts, row.version) == (Status.FAILED, 0, 3)
    assert inbox.get_status("m", "b").status is Status.POISONED  # another handler key
    assert inbox.get_status("other", "k").status is Status.PROCESSING  # never quarantined
    with store.database.engine.connect() as conn:  # rolled back: nothing lifted
        assert inbox.lift_quarantine(["m"], None, connection=conn) == 1
        conn.rollback()
    assert inbox.get_status("m", "b").status is Status.POISONED


def test_a_write_in_the_callers_transaction_goes_with_it(inbox, store):
    claim(inbox)
    with store.database.engine.connect() as conn:
        assert inbox.finish("m", "k", 1, Status.COMPLETED, NOW, connection=conn)
        assert inbox.get_status("m", "k", connection=conn).status is Status.COMPLETED
        conn.rollback()
    assert inbox.get_status("m", "k").status is Status.PROCESSING


def test_an_interrupted_claim_is_handed_back_by_its_owner_only(inbox):
    claim(inbox, owner="w1")
    assert not inbox.release_interrupted("m", "k", "w2")
    assert inbox.release_interrupted("m", "k", "w1")
    row = inbox.get_status("m", "k")
    assert (row.status, row.attempts, row.version) == (Status.FAILED, 0, 2)
    assert not inbox.release_interrupted("m", "k", "w1")  # no longer processing


def test_a_store_without_its_tables_raises_one_of_its_failures(store):
    for cls in filter(lambda cls: serves(cls, store.database), INBOX_STORES):
        missing = cls(store.database, build_tables(f"{store.tables.prefix}missing_"))
        with pytest.raises(missing.failures):
            missing.insert_claim("m", "k", "task", NOW, "w1")
        assert issubclass(DBAPIError, missing.failures)  # what the SQL layer raises


# The relay's outbox rows -------------------------------------------------------------------


def add(store: Store, message_id: str, *, due: datetime = NOW, key: str | None = None) -> int:
    """An outbox row as the outbox writes it (the relay's adapter only reads and updates)."""
    row = {
        "message_id": message_id,
        "task_id": f"t-{message_id}",
        "task_name": "task",
        "queue": "q",
        "exchange": "",
        "routing_key": "q",
        "body": b"{}",
        "content_type": "application/json",
        "content_encoding": "utf-8",
        "headers": "{}",
        "properties": "{}",
        "ordering_key": key,
        "status": "pending",
        "attempts": 0,
        "created_at": NOW,
        "available_at": due,
    }
    with store.database.engine.begin() as conn:
        return int(conn.execute(insert(store.tables.outbox).values(row)).inserted_primary_key[0])


def outbox_row(store: Store, row_id: int) -> Any:
    t = store.tables.outbox
    with store.database.engine.connect() as conn:
        return conn.execute(select(t).where(t.c.id == row_id)).one()


def take(rows: Any, token: str, *, limit: int = 10, now: datetime = NOW, **stale: Any) -> list[str]:
    """Claim a batch; claims taken since ``stale_before`` (by default, NOW) are live."""
    stale_before = stale.get("stale_before", NOW - timedelta(seconds=1))
    return [r.message_id for r in rows.claim(limit, now, token, stale_before)]


def test_a_batch_is_the_due_rows_oldest_first_up_to_the_limit(rows, store):
    for n in (1, 2, 3):
        add(store, f"m{n}")
    add(store, "later", due=LATER)
    assert take(rows, "a", limit=2) == ["m1", "m2"]
    assert take(rows, "b") == ["m3"]  # a live claim is not taken twice
    assert take(rows, "c") == []
    assert take(rows, "d", now=LATER + timedelta(minutes=2)) == ["later"]


def test_sent_rows_are_marked_by_their_batch_only(rows, store):
    first, second = add(store, "m1"), add(store, "m2")
    assert take(rows, "a") == ["m1", "m2"]
    assert rows.mark_sent([first, second], "someone-else", NOW) == 0
    assert rows.mark_sent([first, second], "a", LATER) == 2
    sent = outbox_row(store, first)
    assert (sent.status, sent.sent_at, sent.claim_token) == ("sent", LATER, None)
    assert take(rows, "b", now=LATER) == []  # sent rows are never claimed again


def test_a_dead_relays_batch_is_taken_over_and_its_late_writes_change_nothing(rows, store):
    row_id = add(store, "m1")
    assert take(rows, "slow") == ["m1"]
    much_later = NOW + timedelta(hours=1)
    assert take(rows, "fresh", now=much_later, stale_before=much_later) == ["m1"]
    assert rows.mark_sent([row_id], "slow", much_later) == 0
    rows.mark_failed(row_id, "slow", "late", much_later, max_attempts=5)
    rows.release([row_id], "slow")
    row = outbox_row(store, row_id)
    assert (row.status, row.attempts, row.claim_token) == ("pending", 0, "fresh")
    assert rows.mark_sent([row_id], "fresh", much_later) == 1


def test_a_failed_publish_is_retried_at_its_time_and_poisoned_at_the_limit(rows, store):
    row_id = add(store, "m1")
    take(rows, "a")
    rows.mark_failed(row_id, "a", "NOT_FOUND - no exchange", LATER, max_attempts=2)
    row = outbox_row(store, row_id)
    assert (row.status, row.attempts, row.last_error) == ("pending", 1, "NOT_FOUND - no exchange")
    assert (row.available_at, row.claim_token) == (LATER, None)
    assert take(rows, "b") == []  # not before its retry time
    assert take(rows, "c", now=LATER) == ["m1"]
    rows.mark_failed(row_id, "c", "NOT_FOUND again", LATER, max_attempts=2)
    assert (outbox_row(store, row_id).status, outbox_row(store, row_id).attempts) == (
        "poisoned",
        2,
    )
    assert take(rows, "d", now=LATER + timedelta(days=1)) == []  # never published again


def test_released_rows_are_due_again_at_once_and_uncounted(rows, store):
    row_id = add(store, "m1")
    take(rows, "a")
    rows.release([row_id], "a")
    assert outbox_row(store, row_id).attempts == 0
    assert take(rows, "b") == ["m1"]


def test_a_keys_rows_go_in_order_and_a_held_head_holds_its_key_only(rows, store):
    head = add(store, "k1", key="customer-1")
    add(store, "k2", key="customer-1")
    add(store, "k3", key="customer-1")
    add(store, "other", key="customer-2")
    assert take(rows, "a", limit=2) == ["k1", "k2"]
    assert take(rows, "b") == ["other"]  # k3 waits behind the claimed k1 and k2
    rows.mark_failed(head, "a", "broker hiccup", LATER, max_attempts=5)
    rows.release([head + 1], "a")
    add(store, "free", key=None)
    assert take(rows, "c") == ["free"]  # the key's head waits for its retry, and k2, k3 too
    # k2 and k3 were due before their head's retry: they follow it, in the next batch.
    assert take(rows, "d", now=LATER) == ["k1"]
    assert rows.mark_sent([head], "d", LATER) == 1
    assert take(rows, "e", now=LATER) == ["k2", "k3"]


# The dead-letter rows port ---------------------------------------------------------------


def batch_delete(database: Database) -> Any:
    """What ``Maintenance.delete_in_batches`` is to the adapter: delete matching rows."""

    def delete_rows(table: Any, where: Any) -> int:
        with database.engine.begin() as conn:
            return int(conn.execute(delete(table).where(where)).rowcount)

    return delete_rows


@pytest.fixture(params=DEAD_LETTER_ROWS, ids=lambda cls: cls.__name__)
def letters(request: pytest.FixtureRequest, store: Store) -> Any:
    return request.param(store.database, store.tables, batch_delete(store.database))


def letter(
    letters: Any, message_id: str, *, reason: str = "PoisonMessage", task: str = "t", **extra: Any
) -> int:
    message = FailedMessage(message_id=message_id, task_id=message_id, task_name=task, args=[1])
    row = entry_row(message, reason, exc=ValueError("no"), detail=None, detector="d", redactor=None)
    fit_row(row, letters.lengths, letters.value_budget())
    return int(letters.insert({**row, **extra}))


def test_an_entry_is_read_back_as_written(letters):
    entry_id = letter(letters, "m1", task="shop.charge")
    row = letters.get(entry_id)
    assert (row.message_id, row.task_name, row.reason) == ("m1", "shop.charge", "PoisonMessage")
    assert row.exception_type == "ValueError"
    assert letters.get(entry_id + 1000) is None


def test_the_filter_selects_counts_and_pages_alike(letters):
    first = letter(letters, "a", reason="PoisonMessage", task="x")
    letter(letters, "b", reason="MaxRetriesExceeded", task="x")
    letter(letters, "c", reason="PoisonMessage", task="y")
    poison = DeadLetterFilter(reason="PoisonMessage")
    assert letters.count(poison) == 2
    assert letters.count(DeadLetterFilter(task_name="x")) == 2
    assert letters.count(DeadLetterFilter()) == 3
    assert letters.count(DeadLetterFilter(), limit=1) == 1
    assert sorted(row.message_id for row in letters.select(poison, 10, 0)) == ["a", "c"]
    assert len(letters.select(DeadLetterFilter(), 2, 0)) == 2
    assert len(letters.select(DeadLetterFilter(), 2, 2)) == 1
    assert letters.count(DeadLetterFilter(until=datetime.now(timezone.utc) - LATER_GAP)) == 0
    assert letters.last_id(DeadLetterFilter(task_name="x")) >= first


def test_statistics_count_by_reason_task_and_keep_the_oldest(letters):
    letter(letters, "a", reason="PoisonMessage", task="x")
    letter(letters, "b", reason="PoisonMessage", task="y")
    letter(letters, "b", reason="PoisonMessage", task="y")  # its replay failed again
    stats = letters.statistics()
    assert stats.count == 3
    assert stats.messages == 2
    assert stats.by_reason == {"PoisonMessage": 3}
    assert stats.by_task == {"x": 1, "y": 2}
    assert stats.oldest is not None


def test_delete_and_delete_matching_remove_only_what_they_name(letters):
    keep = letter(letters, "keep", task="x")
    gone = letter(letters, "gone", task="y")
    assert letters.delete(gone) is True
    assert letters.delete(gone) is False
    letter(letters, "old", task="z")
    assert letters.delete_matching(DeadLetterFilter(task_name="z")) == 1
    assert [row.id for row in letters.select(DeadLetterFilter(), 10, 0)] == [keep]


def test_replays_are_recorded_with_their_outbox_rows_in_one_transaction(letters, store):
    entry_id = letter(letters, "r")
    with letters.transaction() as conn:
        assert letters.lock(conn, entry_id) is not None
        letters.record_replays(conn, [], [entry_id], NOW)
    row = letters.get(entry_id)
    assert row.replay_count == 1
    assert letters.count(DeadLetterFilter(replayed=True)) == 1
    assert letters.count(DeadLetterFilter(replayed=False)) == 0


def test_a_head_due_after_a_batch_of_its_own_rows_is_taken_first(rows, store):
    """The oldest-due batch holds only rows behind their key's head (due later than them):
    the claim takes that head instead of nothing, and the rest follow in order."""
    head = add(store, "k1", key="k", due=NOW - timedelta(minutes=1))
    add(store, "k2", key="k", due=NOW - timedelta(minutes=10))
    add(store, "k3", key="k", due=NOW - timedelta(minutes=10))
    add(store, "late", key=None, due=NOW - timedelta(seconds=30))
    batch = rows.claim(2, NOW, "a", NOW - timedelta(seconds=1))
    assert [r.message_id for r in batch] == ["k1"]
    assert not batch.held_back
    assert rows.mark_sent([head], "a", NOW) == 1
    assert take(rows, "b") == ["k2", "k3", "late"]
