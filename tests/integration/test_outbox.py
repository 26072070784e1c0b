"""The outbox and the relay on each database, with an embedded worker on the in-process broker."""

from __future__ import annotations

import threading
from collections import Counter
from datetime import datetime, timedelta, timezone

import pytest
from celery.contrib.testing.worker import start_worker
from sqlalchemy import Column, Integer, MetaData, String, Table, func, select, update
from sqlalchemy.orm import Session

from celery_reliable import EnqueueError, Reliable, ReliableTask
from celery_reliable.clock import utcnow
from celery_reliable.relay import Relay
from celery_reliable.testing import wait_for
from tests.support import make_app


class Shop:
    def __init__(self, db_url: str, prefix: str) -> None:
        self.app = make_app(
            "memory://",
            db_url,
            prefix,
            reliable_outbox_max_attempts=2,
            reliable_outbox_max_payload_bytes=10_000,
        )
        self.reliable = Reliable.of(self.app)
        self.reliable.create_schema()
        self.orders = Table(
            f"{prefix}orders",
            MetaData(),
            Column("id", Integer, primary_key=True),
            Column("note", String(100)),
        )
        self.orders.create(self.reliable.database.engine)
        self.receipts: Counter[str] = Counter()
        self.lock = threading.Lock()
        shop = self

        @self.app.task(base=ReliableTask, bind=True, shared=False, name="receipt")
        def receipt(self, order_id):
            with shop.lock:
                shop.receipts[self.request.headers.get("reliable_message_id") or order_id] += 1

        @self.app.task(base=ReliableTask, bind=True, shared=False, name="place")
        def place(self, order_id):
            with self.transaction() as session:
                session.execute(shop.orders.insert().values(id=order_id, note="placed"))
                shop.reliable.outbox.enqueue(
                    session, receipt.s(order_id), message_id=f"receipt-{order_id}"
                )

        self.receipt, self.place = receipt, place

    def rows(self, **where):
        t = self.reliable.tables.outbox
        query = select(t).order_by(t.c.id)
        for column, value in where.items():
            query = query.where(t.c[column] == value)
        with self.reliable.database.engine.connect() as conn:
            return conn.execute(query).all()

    def clear(self) -> None:
        with self.reliable.database.engine.begin() as conn:
            conn.execute(self.reliable.tables.outbox.delete())
        self.receipts.clear()


@pytest.fixture(scope="module")
def running_shop(module_db):
    shop = Shop(*module_db)
    with start_worker(
        shop.app, pool="threads", concurrency=2, perform_ping_check=False, shutdown_timeout=60
    ):
        yield shop
    shop.reliable.database.dispose()


@pytest.fixture
def shop(running_shop):
    running_shop.clear()
    return running_shop


def test_a_rolled_back_transaction_leaves_no_message(shop):
    with Session(shop.reliable.database.engine) as session, session.begin():
        shop.reliable.outbox.enqueue(session, shop.receipt.s(1), message_id="receipt-1")
        session.rollback()
    assert shop.rows() == []
    assert shop.reliable.relay.drain() == 0


def test_a_committed_message_is_relayed_once_and_runs_once(shop):
    with Session(shop.reliable.database.engine) as session, session.begin():
        message_id = shop.reliable.outbox.enqueue(session, shop.receipt.s(2), message_id="r-2")
    assert message_id == "r-2"
    assert shop.reliable.relay.drain() == 1
    assert shop.reliable.relay.drain() == 0
    wait_for(lambda: shop.receipts["r-2"] == 1, 30, what="the receipt task to run")
    (row,) = shop.rows()
    assert (row.status, row.attempts) == ("sent", 0)
    assert row.sent_at is not None


def test_enqueue_takes_a_connection_too(shop):
    with shop.reliable.database.engine.begin() as conn:
        shop.reliable.outbox.enqueue(conn, shop.receipt.s(3))
    assert len(shop.rows(status="pending")) == 1


def test_a_task_enqueues_its_follow_up_atomically_with_its_own_writes(shop):
    shop.place.delay(40)
    wait_for(lambda: shop.rows(message_id="receipt-40"), 30, what="the follow-up row")
    assert shop.reliable.relay.drain() == 1
    wait_for(lambda: shop.receipts["receipt-40"] == 1, 30, what="the follow-up to run")
    (row,) = shop.rows()
    assert row.task_name == "receipt"


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda s: (s.app.signature("no.such.task"), {}), "not registered"),
        (lambda s: (s.receipt.s(object()), {}), "cannot be serialized"),
        (lambda s: (s.receipt.s("x" * 20_000), {}), "reliable_outbox_max_payload_bytes"),
        (lambda s: (s.receipt.s(1), {"serializer": "pickle"}), "reliable_outbox_allow_pickle"),
        (lambda s: (s.receipt.s(1), {"message_id": ""}), "must not be empty"),
        (lambda s: (s.receipt.s(1), {"ordering_key": 7}), "ordering_key must be a string"),
        (lambda s: (s.receipt.s(1), {"countdown": 5, "eta": utcnow()}), "not both"),
        (lambda s: (s.receipt.s(1), {"eta": datetime(2030, 1, 1)}), "timezone-aware"),
        (lambda s: (s.receipt.s(1), {"countdown": -1}), "seconds >= 0"),
        (lambda s: ("receipt", {}), "expected a signature"),
    ],
)
def test_bad_input_is_refused_before_anything_is_written(shop, build, message):
    signature, options = build(shop)
    with Session(shop.reliable.database.engine) as session, session.begin():
        with pytest.raises(EnqueueError, match=message):
            shop.reliable.outbox.enqueue(session, signature, **options)
        session.execute(shop.orders.select())  # the caller's transaction is still usable
    assert shop.rows() == []


def test_a_delayed_message_waits_in_the_store_until_due(shop):
    with shop.reliable.database.engine.begin() as conn:
        shop.reliable.outbox.enqueue(conn, shop.receipt.s(5), countdown=3600, message_id="later")
    assert shop.reliable.relay.drain() == 0
    (row,) = shop.rows()
    assert row.available_at > utcnow() + timedelta(minutes=59)
    _make_due(shop)
    assert shop.reliable.relay.drain() == 1
    wait_for(lambda: shop.receipts["later"] == 1, 30, what="the delayed message to run")


def test_a_stale_claim_is_reclaimed_and_the_slow_relay_cannot_mark_it(shop):
    with shop.reliable.database.engine.begin() as conn:
        shop.reliable.outbox.enqueue(conn, shop.receipt.s(6), message_id="stale")
    rows = shop.reliable.relay.rows
    slow = rows.claim(10, utcnow(), "slow-relay", utcnow() - timedelta(minutes=5))
    assert [r.message_id for r in slow] == ["stale"]
    assert shop.reliable.relay.drain() == 0  # a fresh claim is respected
    with shop.reliable.database.engine.begin() as conn:  # ... until it is older than the lease
        table = shop.reliable.tables.outbox
        conn.execute(update(table).values(claimed_at=utcnow() - timedelta(hours=1)))
    assert shop.reliable.relay.drain() == 1
    assert rows.mark_sent([slow[0].id], "slow-relay", utcnow()) == 0
    wait_for(lambda: shop.receipts["stale"] == 1, 30, what="the reclaimed message to run")


def test_a_message_that_fails_to_publish_backs_off_then_is_poisoned(shop):
    with shop.reliable.database.engine.begin() as conn:
        shop.reliable.outbox.enqueue(conn, shop.receipt.s(7), message_id="broken")
        conn.execute(update(shop.reliable.tables.outbox).values(headers="{not json"))
    assert shop.reliable.relay.drain() == 0
    (row,) = shop.rows()
    assert (row.status, row.attempts) == ("pending", 1)
    assert row.available_at > utcnow()  # backing off
    assert "JSONDecodeError" in row.last_error
    _make_due(shop)
    shop.reliable.relay.drain()
    (row,) = shop.rows()
    assert (row.status, row.attempts) == ("poisoned", 2)  # reliable_outbox_max_attempts=2
    _make_due(shop)
    assert shop.reliable.relay.drain() == 0  # kept, never published again by itself


def _make_due(shop) -> None:
    past = datetime.now(timezone.utc) - timedelta(seconds=1)
    with shop.reliable.database.engine.begin() as conn:
        conn.execute(update(shop.reliable.tables.outbox).values(available_at=past))


def test_relays_racing_publish_each_row_once(shop):
    with shop.reliable.database.engine.begin() as conn:
        for n in range(300):
            shop.reliable.outbox.enqueue(conn, shop.receipt.s(n), message_id=f"race-{n}")
    barrier = threading.Barrier(3)
    counts: list[int] = []
    reliable = shop.reliable

    def relay():
        # A relay of its own, with its own broker connection, as each relay process has.
        mine = Relay(shop.app, reliable.relay.rows, reliable.settings, reliable.tables)
        barrier.wait()
        counts.append(mine.drain())
        mine.close()

    threads = [threading.Thread(target=relay) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sum(counts) == 300
    with shop.reliable.database.engine.connect() as conn:
        t = shop.reliable.tables.outbox
        assert conn.execute(select(func.count()).where(t.c.status == "sent")).scalar() == 300
    wait_for(lambda: len(shop.receipts) == 300, 60, what="every message to run")
    assert set(shop.receipts.values()) == {1}


def test_a_running_relay_is_woken_by_commits_on_postgresql(db_url, table_prefix):
    """With a 60 s idle interval, only the commit notification can explain a fast publish."""
    if not db_url.startswith("postgresql"):
        pytest.skip("LISTEN/NOTIFY is PostgreSQL's; other stores poll")
    shop = Shop(db_url, table_prefix)
    shop.app.conf.reliable_relay_idle_interval = 60
    shop.reliable.__dict__.pop("settings", None)  # re-read: this relay idles for a minute
    shop.reliable.__dict__.pop("relay", None)
    stop = threading.Event()
    relay = threading.Thread(target=shop.reliable.relay.run, args=(stop,))
    try:
        with start_worker(shop.app, pool="threads", perform_ping_check=False, shutdown_timeout=60):
            relay.start()
            wait_for(lambda: _listening(shop), 10, what="the relay to LISTEN")
            with shop.reliable.database.engine.begin() as conn:
                shop.reliable.outbox.enqueue(conn, shop.receipt.s(1), message_id="woken")
            wait_for(lambda: shop.receipts["woken"] == 1, 10, what="the woken relay's publish")
    finally:
        stop.set()
        relay.join(10)
        shop.reliable.database.dispose()
    assert not relay.is_alive()


def _listening(shop) -> bool:
    query = "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'LISTEN%%outbox%%'"
    with shop.reliable.database.engine.connect() as conn:
        return bool(conn.exec_driver_sql(query).scalar())


def test_each_ordering_key_is_published_in_order_and_a_failing_head_blocks_only_its_key(shop):
    outbox, table = shop.reliable.outbox, shop.reliable.tables.outbox
    with shop.reliable.database.engine.begin() as conn:
        for name, key in [
            ("a1", "A"),
            ("b1", "B"),
            ("a2", "A"),
            ("n1", None),
            ("b2", "B"),
            ("a3", "A"),
            ("b3", "B"),
        ]:
            outbox.enqueue(conn, shop.receipt.s(name), message_id=name, ordering_key=key)
        # A's head cannot be published for now (a broken row, as a stand-in for any failure).
        conn.execute(update(table).where(table.c.message_id == "a1").values(headers="{"))
    shop.reliable.relay.drain()
    status = {row.message_id: row.status for row in shop.rows()}
    assert status == {
        "a1": "pending",
        "a2": "pending",
        "a3": "pending",
        "b1": "sent",
        "b2": "sent",
        "b3": "sent",
        "n1": "sent",
    }
    with shop.reliable.database.engine.begin() as conn:  # the cause is fixed
        good = shop.reliable.outbox.build_row(shop.receipt.s("a1"), "a1", "A", None, None, {})
        conn.execute(
            update(table).where(table.c.message_id == "a1").values(headers=good["headers"])
        )
    _make_due(shop)
    assert shop.reliable.relay.run_batch() == 3  # A's three rows, as one run
    assert {row.status for row in shop.rows()} == {"sent"}
    # The order on the broker, with a hot key: tests/acceptance/test_relay.py
