"""The relay's fast paths on real brokers: stored messages moved as bytes, keys kept in order.

What reaches the broker is compared with what kombu publishes for the same row (the relay's
former, and still fallback, path); the order of every ordering key is read back from the
broker's queue. That real workers run these messages: tests/acceptance/test_relay.py.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from kombu import Connection, Producer
from kombu.utils import json as kombu_json
from sqlalchemy import func, select, update

from celery_reliable import Reliable
from celery_reliable.clock import utcnow
from celery_reliable.relay import Relay
from celery_reliable.testing import drop_store, wait_for
from tests.support import make_app, require, unique

BATCH = 100


class Bench:
    """A producer app on a real broker and PostgreSQL, with its own queue and tables."""

    def __init__(self, broker_url: str, db_url: str, prefix: str) -> None:
        self.broker_url, self.db_url, self.prefix = broker_url, db_url, prefix
        self._others: list[Reliable] = []
        self.queue = f"q_{prefix}"
        self.app = make_app(broker_url, db_url, prefix, reliable_relay_batch_size=BATCH)
        self.app.task(name="bench.ship", shared=False)(_ship)
        self.reliable = Reliable.of(self.app)
        self.reliable.create_schema()
        self.table = self.reliable.tables.outbox
        self.batches: list[int] = []
        self.reliable.relay.hooks.batch = lambda claimed, sent, seconds: self.batches.append(sent)

    def another_relay(self) -> Relay:
        """A relay of its own app on the same store and broker (closed with this bench)."""
        app = make_app(self.broker_url, self.db_url, self.prefix, reliable_relay_batch_size=50)
        app.task(name="bench.ship", shared=False)(_ship)
        other = Reliable.of(app)
        self._others.append(other)
        return other.relay

    def enqueue(self, items: list[tuple[str, str | None]]) -> None:
        """(name, ordering key) pairs, in this order, in one transaction."""
        with self.reliable.database.engine.begin() as conn:
            for name, key in items:
                self.reliable.outbox.enqueue(
                    conn, self.app.tasks["bench.ship"].s(name), message_id=name, ordering_key=key
                )

    def rows(self) -> dict[str, Any]:
        with self.reliable.database.engine.connect() as conn:
            return {row.message_id: row for row in conn.execute(select(self.table))}

    def published(self) -> list[str]:
        """Message ids on the queue, in the order a consumer receives them (drains it)."""
        with Connection(self.broker_url) as conn:
            channel = conn.default_channel
            if conn.transport.driver_type == "redis":  # LPUSH, BRPOP: oldest on the right
                raw = channel.client.lrange(self.queue, 0, -1)[::-1]
                channel.client.delete(self.queue)
                return [json.loads(item)["headers"]["reliable_message_id"] for item in raw]
            ids = []
            while (message := channel.basic_get(self.queue, no_ack=True)) is not None:
                ids.append(message.headers["reliable_message_id"])
            return ids

    def close(self) -> None:
        for reliable in (self.reliable, *self._others):
            reliable.relay.close()
            reliable.database.dispose()
        with self.app.connection_for_write() as conn:
            conn.default_channel.queue_delete(self.queue)
            conn.default_channel.exchange_delete(self.queue)


def _ship(name: str) -> str:
    return name


@pytest.fixture
def bench(broker_url: str) -> Iterator[Bench]:
    db_url, prefix = require("postgresql"), unique()
    made = Bench(broker_url, db_url, prefix)
    yield made
    made.close()
    drop_store(db_url, prefix)


def test_the_relay_sends_exactly_what_kombu_sends_for_the_row(bench):
    bench.enqueue([("m-1", "k"), ("m-2", None)])
    rows = sorted(bench.rows().values(), key=lambda row: row.id)
    driver = bench.app.connection_for_write().transport.driver_type
    assert [row.wire_format for row in rows] == [driver, driver]  # prepared at enqueue
    assert bench.reliable.relay.drain() == 2
    with Connection(bench.broker_url) as conn:  # the same rows, published as kombu does
        producer = Producer(conn.default_channel)
        for row in rows:
            producer.publish(
                row.body,
                exchange=row.exchange,
                routing_key=row.routing_key,
                content_type=row.content_type,
                content_encoding=row.content_encoding,
                headers=kombu_json.loads(row.headers),
                **kombu_json.loads(row.properties),
            )
        fast, slow = _received(conn, bench.queue, 2), _received(conn, bench.queue, 2)
    assert fast == slow


def _received(conn: Connection, queue: str, count: int) -> list[Any]:
    """The next ``count`` messages as the broker holds them, delivery tags left out."""
    channel = conn.default_channel
    if conn.transport.driver_type == "redis":
        raw = [channel.client.rpop(queue) for _ in range(count)]
        # The whole envelope, byte for byte, but for the tag each publish draws anew.
        return [
            item.replace(json.loads(item)["properties"]["delivery_tag"].encode(), b"")
            for item in raw
        ]
    messages = [channel.basic_get(queue, no_ack=True) for _ in range(count)]
    return [(m.body, m.properties, m.headers) for m in messages]


def test_a_hot_ordering_key_goes_out_in_full_batches_and_in_commit_order(bench):
    items: list[tuple[str, str | None]] = []
    for n in range(300):  # one hot key, with another key's and unkeyed rows in between
        items.append((f"hot-{n}", "hot"))
        if n % 30 == 0:
            items += [(f"other-{n}", "other"), (f"free-{n}", None)]
    bench.enqueue(items)
    assert bench.reliable.relay.drain() == len(items)
    assert bench.batches == [BATCH, BATCH, BATCH, len(items) - 3 * BATCH]  # none runs short
    published = bench.published()
    assert sorted(published) == sorted(name for name, _ in items)
    for key in ("hot", "other"):
        assert _of_key(published, key) == _of_key([name for name, _ in items], key)


def _of_key(names: list[str], key: str) -> list[str]:
    return [name for name in names if name.startswith(f"{key}-")]


def test_a_failing_row_holds_back_the_rest_of_its_key_in_the_batch_and_nothing_else(bench):
    items = [(f"hot-{n}", "hot") for n in range(50)] + [(f"free-{n}", None) for n in range(20)]
    bench.enqueue(sorted(items, key=lambda item: item[0].split("-")[1].zfill(3)))
    with bench.reliable.database.engine.begin() as conn:  # hot-20 cannot be published
        broken = update(bench.table).where(bench.table.c.message_id == "hot-20")
        conn.execute(broken.values(wire_format=None, headers="{"))
    bench.reliable.relay.drain()
    rows = bench.rows()
    assert {name for name, row in rows.items() if row.status == "sent"} == {
        *(f"hot-{n}" for n in range(20)),
        *(f"free-{n}" for n in range(20)),
    }
    assert rows["hot-20"].attempts == 1  # charged, backing off
    assert {rows[f"hot-{n}"].attempts for n in range(21, 50)} == {0}  # held back, not charged
    with bench.reliable.database.engine.begin() as conn:  # the cause is fixed; it is due
        good = bench.reliable.outbox.build_row(
            bench.app.tasks["bench.ship"].s("hot-20"), "hot-20", "hot", None, None, {}
        )
        conn.execute(broken.values(headers=good["headers"], available_at=utcnow()))
    assert bench.reliable.relay.drain() == 30
    assert _of_key(bench.published(), "hot") == [f"hot-{n}" for n in range(50)]


def test_relays_racing_keep_every_key_in_order(bench):
    keys = ["a", "b", "c"]
    bench.enqueue([(f"{keys[n % 3]}-{n}", keys[n % 3]) for n in range(900)])
    relays = [bench.another_relay() for _ in range(3)]  # own connections, like processes
    barrier = threading.Barrier(3)
    counts: list[int] = []

    def relay(mine: Relay) -> None:
        barrier.wait()
        counts.append(mine.drain())

    threads = [threading.Thread(target=relay, args=(mine,)) for mine in relays]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert sum(counts) == 900
    published = bench.published()
    assert len(published) == 900
    for key in keys:
        assert _of_key(published, key) == [f"{key}-{n}" for n in range(900) if keys[n % 3] == key]


def test_a_drain_waits_for_another_relays_claim_of_its_keys_heads(bench):
    """The heads of three keys locked by another relay's claim in progress: the rows behind
    them are due but cannot be taken yet. A drain tries again once that claim ends, instead
    of reporting 0 sent with every row still due (``relay --once`` beside running relays)."""
    keys = ["a", "b", "c"]
    bench.enqueue([(f"{keys[n % 3]}-{n}", keys[n % 3]) for n in range(30)])
    relay = bench.another_relay()
    claims: list[int] = []
    claim = relay.rows.claim

    def counted(*args: Any) -> Any:
        batch = claim(*args)
        claims.append(len(batch))
        return batch

    relay.rows.claim = counted  # type: ignore[method-assign]
    heads = select(bench.table.c.id).where(bench.table.c.message_id.in_(["a-0", "b-1", "c-2"]))
    with bench.reliable.database.engine.connect() as other:
        other.execute(heads.with_for_update())  # another relay's claim, not yet committed
        result: list[int] = []
        drainer = threading.Thread(target=lambda: result.append(relay.drain()))
        drainer.start()
        wait_for(lambda: len(claims) >= 2 or not drainer.is_alive(), 30, what="a second claim")
        assert drainer.is_alive(), f"the drain returned {result} with every row due"
        other.rollback()
    drainer.join(30)
    assert result == [30]
    assert claims[0] == 0  # held back by the other claim
    assert sum(claims) == 30
    with bench.reliable.database.engine.connect() as conn:
        pending = bench.table.c.status == "pending"
        assert conn.execute(select(func.count()).where(pending)).scalar_one() == 0
    published = bench.published()
    for key in keys:
        assert _of_key(published, key) == [f"{key}-{n}" for n in range(30) if keys[n % 3] == key]


def test_a_key_whose_head_fell_behind_a_batch_of_its_own_rows_still_drains(bench):
    """The head of a key due after a whole batch of the rows behind it (a countdown on the
    first message, say): the oldest-due batch holds none of the key's head, so none of its
    rows could be taken. The claim looks again in the keys' order instead of stalling."""
    bench.enqueue([(f"k-{n}", "k") for n in range(BATCH + 20)])
    now = utcnow()
    with bench.reliable.database.engine.begin() as conn:
        conn.execute(update(bench.table).values(available_at=now - timedelta(minutes=10)))
        head = update(bench.table).where(bench.table.c.message_id == "k-0")
        conn.execute(head.values(available_at=now - timedelta(minutes=1)))
    assert bench.reliable.relay.drain() == BATCH + 20
    assert _of_key(bench.published(), "k") == [f"k-{n}" for n in range(BATCH + 20)]
