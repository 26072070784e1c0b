"""Faults under load: the store or the broker unreachable, connections dropped, a slow broker.

Each fault comes from a TCP proxy between the worker and the service (tests/support.py
FaultyLink), so the shared services stay up. Under every fault nothing is lost, nothing is
doubled, and nothing is dead-lettered: an outage is not the messages' fault.

Outages last ``RELIABLE_FAULT_SECONDS`` (5 s in CI; the issue's 30 s on demand).
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from sqlalchemy import func, select

from celery_reliable import MESSAGE_ID_HEADER
from tests.acceptance.conftest import Stack
from tests.support import FaultyLink, database_url, require, wait_for

FAULT_SECONDS = float(os.environ.get("RELIABLE_FAULT_SECONDS", "5"))
_PORTS = {"postgresql": 5432, "redis": 6379, "amqp": 5672}
#: A claim whose commit the dropped link made ambiguous is only known to be abandoned when
#: its lease runs out (reliable_stuck_threshold, 5 min by default): short here.
STUCK = "10s"


@pytest.fixture(params=["redis", "rabbitmq"])
def stack(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stack]:
    s = Stack(require(request.param), database_url("postgresql", tmp_path), tmp_path)
    yield s
    s.close()


def link_to(url: str) -> FaultyLink:
    parts = urlsplit(url.replace("+psycopg", ""))
    return FaultyLink(parts.hostname or "127.0.0.1", parts.port or _PORTS[parts.scheme])


def send(stack: Stack, count: int, pause: float = 0.0) -> None:
    for _ in range(count):
        message_id = f"f-{uuid.uuid4()}"
        stack.producer.send_task("effect", (None,), headers={MESSAGE_ID_HEADER: message_id})
        if pause:
            time.sleep(pause)  # a steady stream during the fault (pacing, not a wait)


def exactly_once(stack: Stack, total: int) -> None:
    # A message deferred through a long outage waits up to a minute between tries.
    wait_for(
        lambda: stack.effect_count() >= total,
        FAULT_SECONDS * 3 + 150,
        interval=0.2,
        what=f"{total} effects",
    )
    with stack.reliable.database.engine.connect() as conn:
        rows, distinct = conn.execute(
            select(func.count(), func.count(stack.effects.c.message_id.distinct()))
        ).one()
    assert (rows, distinct) == (total, total)
    assert stack.reliable.dead_letters.count() == 0


def test_the_store_unreachable_under_load(stack):
    link = link_to(stack.db)
    try:
        with stack.worker(RT_DB=link.url_for(stack.db), RT_STUCK=STUCK):
            send(stack, 100)
            wait_for(lambda: stack.effect_count() >= 20, 60, what="the flow to start")
            link.cut()
            send(stack, 100, pause=FAULT_SECONDS / 100)  # all of it during the outage
            link.restore()
            exactly_once(stack, 200)
    finally:
        link.close()


def test_store_connections_dropped_mid_transaction(stack):
    link = link_to(stack.db)
    stop = threading.Event()

    def blips() -> None:
        while not stop.wait(0.3):
            link.cut()
            link.restore()

    try:
        with stack.worker(RT_DB=link.url_for(stack.db), RT_STUCK=STUCK):
            dropper = threading.Thread(target=blips, daemon=True)
            dropper.start()
            send(stack, 200, pause=FAULT_SECONDS / 200)
            stop.set()
            dropper.join()
            exactly_once(stack, 200)
    finally:
        stop.set()
        link.close()


def test_the_broker_unreachable_under_load(stack):
    link = link_to(stack.broker)
    try:
        with stack.worker(RT_BROKER=link.url_for(stack.broker)):
            send(stack, 100)
            wait_for(lambda: stack.effect_count() >= 20, 60, what="the flow to start")
            link.cut()
            send(stack, 100, pause=FAULT_SECONDS / 100)  # the producer's own link stays up
            link.restore()
            if stack.broker.startswith("amqp"):
                exactly_once(stack, 200)
            else:
                at_most_one_lost_in_transit(stack, 200)
    finally:
        link.close()


def at_most_one_lost_in_transit(stack: Stack, total: int) -> None:
    """kombu's Redis transport pops a message (BRPOP) before it records it as unacked.

    A connection cut while that reply is in flight loses the message on the broker side
    (kombu issues #305, #593): nothing in the store knows of it yet, so the inbox cannot
    bring it back. This documents the limit instead of hiding it: never a double, and at
    most the one message in flight lost (seen here about once in five runs). RabbitMQ,
    which requeues unacknowledged deliveries itself, is held to exactly once above.
    """
    wait_for(
        lambda: stack.effect_count() >= total - 1 and stack.queue_depth() == 0,
        FAULT_SECONDS * 3 + 150,
        interval=0.2,
        what=f"{total - 1} effects and an empty queue",
    )
    with stack.reliable.database.engine.connect() as conn:
        rows, distinct = conn.execute(
            select(func.count(), func.count(stack.effects.c.message_id.distinct()))
        ).one()
    assert rows == distinct  # never doubled
    assert rows >= total - 1


def test_a_slow_broker(stack):
    link = link_to(stack.broker)
    link.delay = 0.02
    try:
        with stack.worker(RT_BROKER=link.url_for(stack.broker)):
            send(stack, 100)
            exactly_once(stack, 100)
    finally:
        link.close()
