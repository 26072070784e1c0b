"""Faults under load: the store or the broker unreachable, connections dropped, a slow broker.

Each fault comes from the kit's TCP proxy between the worker and the service
(celery_reliable.testing.FaultyLink), so the shared services stay up. Under every fault
nothing is lost, nothing is doubled, and nothing is dead-lettered: an outage is not the
messages' fault.

Outages last ``RELIABLE_FAULT_SECONDS`` (5 s in CI; the issue's 30 s on demand).
"""

from __future__ import annotations

import os
import random
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from celery_reliable import MESSAGE_ID_HEADER
from celery_reliable.testing import (
    FaultyLink,
    check_exactly_once,
    column_values,
    wait_for,
    wait_for_exactly_once,
)
from tests.acceptance.conftest import Stack
from tests.support import database_url, require

FAULT_SECONDS = float(os.environ.get("RELIABLE_FAULT_SECONDS", "5"))
#: A message deferred through a long outage waits up to a minute between tries.
SETTLE_SECONDS = FAULT_SECONDS * 3 + 150
#: A claim whose commit the dropped link made ambiguous is only known to be abandoned when
#: its lease runs out (reliable_stuck_threshold, 5 min by default): short here.
STUCK = "10s"


@pytest.fixture(params=["redis", "rabbitmq"])
def stack(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stack]:
    s = Stack(require(request.param), database_url("postgresql", tmp_path), tmp_path)
    yield s
    s.close()


def send(stack: Stack, count: int, sent: list[str], pause: float = 0.0) -> None:
    """Send ``count`` effects, adding their task ids (what the effect records) to ``sent``."""
    for _ in range(count):
        headers = {MESSAGE_ID_HEADER: f"f-{uuid.uuid4()}"}
        sent.append(stack.producer.send_task("effect", (None,), headers=headers).id)
        if pause:
            time.sleep(pause)  # a steady stream during the fault (pacing, not a wait)


def applied(stack: Stack) -> list[str]:
    return column_values(stack.reliable.database.engine, stack.effects.c.message_id)


def exactly_once(stack: Stack, sent: list[str]) -> None:
    wait_for_exactly_once(sent, lambda: applied(stack), SETTLE_SECONDS)
    assert stack.reliable.dead_letters.count() == 0


def test_the_store_unreachable_under_load(stack, fault_proxy):
    link: FaultyLink = fault_proxy(stack.db)
    sent: list[str] = []
    with stack.worker(RT_DB=link.url, RT_STUCK=STUCK):
        send(stack, 100, sent)
        wait_for(lambda: stack.effect_count() >= 20, 60, what="the flow to start")
        link.cut()
        send(stack, 100, sent, pause=FAULT_SECONDS / 100)  # all of it during the outage
        link.restore()
        exactly_once(stack, sent)


def test_store_connections_dropped_mid_reply(stack, fault_proxy, chaos_seed):
    """Every 0.3 s the store's connection is cut partway through a reply: a commit's
    outcome, a claim's row, an inbox read, each lost halfway at some point."""
    link: FaultyLink = fault_proxy(stack.db)
    stop = threading.Event()
    where = random.Random(chaos_seed)

    def drops() -> None:
        while not stop.wait(0.3):
            if not link.drop_armed:  # re-arming before the bytes came would cancel a drop
                link.drop_mid_stream(after_bytes=where.randrange(1, 2000))

    sent: list[str] = []
    with stack.worker(RT_DB=link.url, RT_STUCK=STUCK):
        dropper = threading.Thread(target=drops, daemon=True)
        dropper.start()
        try:
            send(stack, 200, sent, pause=FAULT_SECONDS / 200)
            deadline = time.monotonic() + SETTLE_SECONDS
            while link.drops < 3 and time.monotonic() < deadline:
                send(stack, 10, sent, pause=0.02)  # a slow machine: traffic until 3 drops
        finally:
            stop.set()
            dropper.join()
        exactly_once(stack, sent)
    assert link.drops >= 3


def test_the_broker_unreachable_under_load(stack, fault_proxy):
    link: FaultyLink = fault_proxy(stack.broker)
    sent: list[str] = []
    with stack.worker(RT_BROKER=link.url):
        send(stack, 100, sent)
        wait_for(lambda: stack.effect_count() >= 20, 60, what="the flow to start")
        link.cut()
        send(stack, 100, sent, pause=FAULT_SECONDS / 100)  # the producer's own link stays up
        link.restore()
        if stack.broker.startswith("amqp"):
            exactly_once(stack, sent)
        else:
            at_most_one_lost_in_transit(stack, sent)


def at_most_one_lost_in_transit(stack: Stack, sent: list[str]) -> None:
    """kombu's Redis transport pops a message (BRPOP) before it records it as unacked.

    A connection cut while that reply is in flight loses the message on the broker side
    (kombu issues #305, #593): nothing in the store knows of it yet, so the inbox cannot
    bring it back. This documents the limit instead of hiding it: never a double, and at
    most the one message in flight lost (seen here about once in five runs). RabbitMQ,
    which requeues unacknowledged deliveries itself, is held to exactly once above.
    """
    wait_for(
        lambda: stack.effect_count() >= len(sent) - 1 and stack.queue_depth() == 0,
        SETTLE_SECONDS,
        interval=0.2,
        what=f"{len(sent) - 1} effects and an empty queue",
    )
    report = check_exactly_once(sent, applied(stack))
    assert not report.doubled, report  # never doubled
    assert not report.unexpected, report
    assert len(report.missing) <= 1, report


def test_a_slow_broker(stack, fault_proxy):
    link: FaultyLink = fault_proxy(stack.broker)
    link.slow(0.02)
    sent: list[str] = []
    with stack.worker(RT_BROKER=link.url):
        send(stack, 100, sent)
        exactly_once(stack, sent)
