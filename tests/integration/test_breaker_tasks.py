"""Circuit breakers inside ReliableTask: open, hold messages without spending attempts,
probe once, close; or dead-letter while open. A real worker on Redis and on RabbitMQ,
breaker state in Redis, as in production."""

from __future__ import annotations

import threading
from collections import Counter

import pytest
from celery.contrib.testing.worker import start_worker

from celery_reliable import DeadLetterReason, Reliable, ReliableTask, RetryPolicy
from celery_reliable.store.base import Status
from celery_reliable.testing import drop_store, wait_for
from tests.support import dead_lettered, make_app, require, unique


class Gateway:
    """A payment service the test takes down and brings back."""

    def __init__(self) -> None:
        self.down = True
        self.calls: Counter[str] = Counter()
        self.lock = threading.Lock()

    def call(self, key: str) -> str:
        with self.lock:
            self.calls[key] += 1
        if self.down:
            raise ConnectionRefusedError("payment gateway down")
        return "paid"


@pytest.fixture(scope="module", params=["redis", "rabbitmq"])
def setup(request, tmp_path_factory):
    redis_url = require("redis")
    prefix = unique()
    db = require("postgresql")
    app = make_app(require(request.param), db, prefix, reliable_redis_url=redis_url)
    reliable = Reliable.of(app)
    reliable.create_schema()
    reliable.breakers.configure("payments", failure_threshold=2, reset_timeout=1)
    reliable.breakers.configure(
        "strict", failure_threshold=1, reset_timeout=60, on_open="dead_letter"
    )
    gateway = Gateway()
    transitions: list[tuple[str, str, str]] = []
    reliable.breakers.add_listener(lambda *t: transitions.append(t))

    @app.task(
        base=ReliableTask,
        bind=True,
        shared=False,
        name="pay",
        circuit_breaker="payments",
        retry_policy=RetryPolicy.fixed(10, 0.1),
    )
    def pay(self):
        return gateway.call(self.request.id)

    @app.task(
        base=ReliableTask, bind=True, shared=False, name="strict_pay", circuit_breaker="strict"
    )
    def strict_pay(self):
        return gateway.call(self.request.id)

    with start_worker(
        app, pool="threads", concurrency=2, perform_ping_check=False, shutdown_timeout=60
    ):
        yield app, reliable, gateway, transitions
    reliable.breakers.reset("payments")
    reliable.breakers.reset("strict")
    reliable.database.dispose()
    drop_store(db, prefix)
    with app.connection_for_write() as conn:
        conn.default_channel.queue_delete(f"q_{prefix}")
        conn.default_channel.exchange_delete(f"q_{prefix}")


def test_an_open_breaker_holds_messages_without_spending_attempts_then_one_probe_closes_it(
    setup,
):
    app, reliable, gateway, transitions = setup
    gateway.down = True
    result = app.tasks["pay"].delay()
    wait_for(lambda: reliable.breakers.states()["payments"] == "open", 30, what="opening")
    held = reliable.store.get_status(result.id, "pay")
    assert held.attempts == 2  # two failures opened it
    gateway.down = False  # the service comes back; after reset_timeout one probe runs
    assert result.get(timeout=30, interval=0.05) == "paid"
    assert reliable.breakers.states()["payments"] == "closed"
    row = reliable.store.get_status(result.id, "pay")
    assert (row.status, row.attempts) == (Status.COMPLETED, 3)  # waiting cost no attempt
    assert gateway.calls[result.id] == 3
    names = [(old, new) for name, old, new in transitions if name == "payments"]
    assert ("closed", "open") in names
    assert names[-1][1] == "closed"


def test_on_open_dead_letter_dead_letters_instead_of_waiting(setup):
    app, reliable, gateway, _ = setup
    gateway.down = True
    first = app.tasks["strict_pay"].delay()  # fails (no retries budget matters: it opens)
    wait_for(lambda: reliable.breakers.states()["strict"] == "open", 30, what="opening")
    second = app.tasks["strict_pay"].delay()
    entry = reliable.dead_letters.get(dead_lettered(second).entry_id)
    assert entry.reason is DeadLetterReason.CIRCUIT_BREAKER_OPEN
    assert gateway.calls[second.id] == 0  # never ran
    assert first.id != second.id
