"""The outbox through `celery reliable relay` processes and a real broker to a real worker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from celery_reliable.testing import FaultyLink, wait_for
from tests.support import ROOT

APP = "tests.acceptance.worker_app"


def relay_command(stack, *args: str):
    env = {**os.environ, "PYTHONPATH": str(ROOT), **stack.env}
    command = [sys.executable, "-m", "celery", "-A", APP, "reliable", "relay", *args]
    return command, env


def enqueue(stack, count: int, *, commit: bool = True, start: int = 0) -> None:
    with Session(stack.reliable.database.engine) as session, session.begin():
        for n in range(start, start + count):
            stack.reliable.outbox.enqueue(
                session, stack.producer.signature("effect", (None,)), message_id=f"o-{n}"
            )
        if not commit:
            session.rollback()


def enqueue_and_wait(stack, count: int, start: int = 0) -> None:
    """Enqueue ``count`` messages and wait until the worker has applied them all."""
    enqueue(stack, count, start=start)
    total = start + count
    wait_for(lambda: stack.effect_count() >= total, 90, what=f"{total} effects")


def test_committed_messages_reach_the_worker_once_and_rolled_back_ones_never(postgres_stack):
    stack = postgres_stack
    enqueue(stack, 200)
    enqueue(stack, 50, commit=False, start=1000)
    command, env = relay_command(stack, "--once")
    first = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == "relayed 200 messages"
    again = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert again.stdout.strip() == "relayed 0 messages"
    with stack.worker():
        wait_for(lambda: stack.effect_count() >= 200, 90, what="200 effects")
    assert stack.effect_count() == 200
    assert stack.count("runs") == 200
    # Prepared for the broker at enqueue and published as bytes (celery_reliable.wire):
    # the worker ran what the relay's fast path put on the broker.
    driver = stack.producer.connection_for_write().transport.driver_type
    assert {row.wire_format for row in stack.outbox_rows()} == {driver}


def test_a_running_relay_publishes_new_commits_and_stops_cleanly_on_sigterm(postgres_stack):
    stack = postgres_stack
    command, env = relay_command(stack)
    relay = subprocess.Popen(
        command, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        with stack.worker():
            enqueue_and_wait(stack, 20)
            enqueue_and_wait(stack, 5, start=20)
    finally:
        relay.send_signal(signal.SIGTERM)
        _, err = relay.communicate(timeout=30)
    assert relay.returncode == 0, err
    assert "stopping after the current batch" in err
    assert stack.effect_count() == 25


def test_a_worker_can_run_the_relay_itself(postgres_stack):
    stack = postgres_stack
    with stack.worker("-P", "threads", RT_RELAY_IN_WORKER="1") as worker:
        enqueue_and_wait(stack, 30)
    assert stack.effect_count() == 30
    assert "Traceback" not in worker.output()


def test_three_relays_publish_ten_thousand_rows_exactly_once(postgres_stack):
    stack = postgres_stack
    enqueue(stack, 10_000)
    command, env = relay_command(stack, "--once")
    relays = [
        subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    outputs = [relay.communicate(timeout=300)[0] for relay in relays]
    assert [relay.returncode for relay in relays] == [0, 0, 0]
    counts = [int(out.split()[1]) for out in outputs]  # "relayed N messages"
    assert sum(counts) == 10_000
    assert stack.outbox_count("sent") == 10_000
    # RabbitMQ's queue count lags the last publishes for a moment.
    assert wait_for(lambda: stack.queue_depth() == 10_000, 30, what="10,000 queued")


def test_a_relay_killed_mid_run_loses_nothing_and_doubles_no_effect(postgres_stack):
    stack = postgres_stack
    total = 3000
    enqueue(stack, total)
    command, env = relay_command(stack)
    env.update(RT_STUCK="2s", RT_RELAY_BATCH="50")
    relay = subprocess.Popen(
        command, env=env, cwd=ROOT, start_new_session=True, stderr=subprocess.DEVNULL
    )
    wait_for(lambda: stack.outbox_count("sent") >= 100, 60, what="the relay to be under way")
    os.killpg(relay.pid, signal.SIGKILL)
    relay.wait(30)
    sent_before = stack.outbox_count("sent")
    assert sent_before < total, "the relay finished before it could be killed"
    once, once_env = relay_command(stack, "--once")
    once_env.update(RT_STUCK="2s")
    with stack.worker():

        def relayed_everything() -> bool:  # rows the killed relay held come back after 2 s
            subprocess.run(once, env=once_env, cwd=ROOT, capture_output=True, timeout=120)
            return stack.outbox_count("sent") == total

        wait_for(relayed_everything, 120, interval=0.5, what="every row to be relayed")
        wait_for(lambda: stack.effect_count() >= total, 120, what=f"{total} effects")
    assert stack.effect_count() == total
    assert stack.count("runs") == total  # a re-published duplicate never ran the body


def test_rows_wait_out_a_broker_outage_without_using_attempts_then_flow(postgres_stack):
    stack = postgres_stack
    link = FaultyLink.to(stack.broker)
    command, env = relay_command(stack)
    env["RT_BROKER"] = link.url_for(stack.broker)  # only the relay goes through the proxy
    relay = subprocess.Popen(
        command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        with stack.worker():
            enqueue_and_wait(stack, 20)
            link.cut()
            enqueue(stack, 20, start=20)
            # The relay tried during the outage: it claimed the new rows and handed them back.
            wait_for(lambda: _tried_and_released(stack) == 20, 60, what="a failed attempt")
            assert stack.outbox_count("pending") == 20  # waiting, not lost, not poisoned
            link.restore()
            wait_for(lambda: stack.effect_count() >= 40, 90, what="40 effects after the outage")
    finally:
        relay.send_signal(signal.SIGTERM)
        _, err = relay.communicate(timeout=60)
        link.close()
    assert stack.effect_count() == 40
    assert "relay lost the broker" in err or "Connection" in err
    t = stack.reliable.tables.outbox
    with stack.reliable.database.engine.connect() as conn:
        errors = conn.execute(select(t.c.last_error).where(t.c.attempts > 0)).scalars().all()
    assert errors == []  # an unreachable broker is not the messages' fault


def _tried_and_released(stack) -> int:
    t = stack.reliable.tables.outbox
    query = select(func.count()).where(
        t.c.status == "pending", t.c.claimed_at.is_not(None), t.c.claim_token.is_(None)
    )
    with stack.reliable.database.engine.connect() as conn:
        return conn.execute(query).scalar_one()


def test_a_message_the_broker_cannot_route_fails_alone_and_never_stalls_the_relay(
    postgres_stack,
):
    stack = postgres_stack
    if not stack.broker.startswith("amqp"):
        pytest.skip("routing failures are RabbitMQ's: Redis queues are always reachable")
    unbound = f"x_unbound_{stack.prefix}"
    with stack.producer.connection_for_write() as conn:  # an exchange no queue is bound to
        conn.default_channel.exchange_declare(unbound, "direct", auto_delete=True)
    signature = stack.producer.signature("effect", (None,))
    with stack.reliable.database.engine.begin() as conn:
        outbox = stack.reliable.outbox
        outbox.enqueue(
            conn,
            signature,
            message_id="missing-exchange",
            exchange=f"x_missing_{stack.prefix}",
            routing_key="nowhere",
        )
        outbox.enqueue(
            conn, signature, message_id="unroutable", exchange=unbound, routing_key="nowhere"
        )
        outbox.enqueue(conn, signature, message_id="fine")
    relay = stack.reliable.relay
    try:
        for _ in range(3):  # the bad rows back off; the good one must get through
            relay.drain()
    finally:
        relay.close()
    rows = {row.message_id: row for row in stack.outbox_rows()}
    assert rows["fine"].status == "sent"
    assert rows["missing-exchange"].status == "pending"
    assert rows["missing-exchange"].attempts == 1
    assert "NOT_FOUND" in rows["missing-exchange"].last_error
    assert rows["unroutable"].status == "pending"
    assert rows["unroutable"].attempts == 1
    assert "unroutable" in rows["unroutable"].last_error
