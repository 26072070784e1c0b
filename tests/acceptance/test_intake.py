"""Messages that never reach a task body are dead-lettered, and the worker keeps running.

Real ``celery worker`` processes on Redis and on RabbitMQ (PostgreSQL store); the bad
messages come from a producer that publishes what a buggy, outdated or hostile sender
would. Each case: one dead-letter entry with the right reason and the raw body kept, the
worker still up and still running a normal task afterwards, and the task queue empty.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from celery import Celery
from celery.exceptions import NotRegistered, TaskRevokedError

from celery_reliable import MESSAGE_ID_HEADER, DeadLettered, DeadLetterReason
from celery_reliable.testing import FaultyLink, wait_for
from tests.support import require

from .intake import LeavesAMark, still_working


def publish(stack, body: bytes, content_type: str, headers: dict[str, Any], **properties) -> None:
    """Put a message on the task queue as it is, bypassing Celery's producer."""
    with stack.producer.connection_for_write() as conn:
        stack.producer.amqp.queues[f"q_{stack.prefix}"](conn.default_channel).declare()
        conn.Producer().publish(
            body,
            exchange="",
            routing_key=f"q_{stack.prefix}",
            content_type=content_type,
            content_encoding="utf-8",
            headers=headers,
            **properties,
        )


def publish_expired(stack, expired_at: datetime) -> str:
    """A valid task message past its ``expires``, without the AMQP expiration Celery adds
    (another client, a clock skew): RabbitMQ delivers it like Redis does."""
    task_id = str(uuid.uuid4())
    message = stack.producer.amqp.as_task_v2(task_id, "effect", (None,), {}, expires=expired_at)
    publish(
        stack,
        json.dumps(message.body).encode(),
        "application/json",
        message.headers,
        **message.properties,
    )
    return task_id


def the_entry(stack, reason: DeadLetterReason):
    """The one dead letter of this test, once it is there."""
    wait_for(lambda: stack.reliable.dead_letters.count() >= 1, 60, what=f"a {reason} entry")
    (entry,) = stack.reliable.dead_letters.list()
    assert entry.reason is reason
    return entry


def results(backend_url: str) -> Celery:
    return Celery("results", backend=backend_url, set_as_current=False)


@contextmanager
def task_events(app: Celery) -> Iterator[list[dict[str, Any]]]:
    """The events sent while the block runs (workers started with -E send task events)."""
    seen: list[dict[str, Any]] = []
    ready = threading.Event()
    with app.connection_for_read() as conn:
        receiver = app.events.Receiver(conn, handlers={"*": seen.append})
        consume_ready = receiver.on_consume_ready

        def on_consume_ready(*args: Any, **kwargs: Any) -> Any:
            ready.set()
            return consume_ready(*args, **kwargs)

        receiver.on_consume_ready = on_consume_ready
        thread = threading.Thread(target=receiver.capture, kwargs={"wakeup": False}, daemon=True)
        thread.start()
        wait_for(ready.is_set, 30, what="the event receiver")
        try:
            yield seen
        finally:
            receiver.should_stop = True
            thread.join(timeout=10)


def test_an_unknown_task_name_is_dead_lettered_with_its_arguments(postgres_stack):
    stack = postgres_stack
    backend = require("redis")
    with stack.worker("-E", RT_BACKEND=backend) as worker, task_events(stack.producer) as events:
        sent = stack.producer.send_task(
            "shop.no_such_task",
            (1, 2),
            {"currency": "EUR"},
            headers={MESSAGE_ID_HEADER: "order-9-refund"},
        )
        entry = the_entry(stack, DeadLetterReason.HANDLER_NOT_FOUND)
        # Celery stores FAILURE (NotRegistered) first, then ours replaces it: a caller's
        # .get() raises DeadLettered, which is also Celery's NotRegistered.
        state = wait_for(
            lambda: (
                isinstance((r := results(backend).AsyncResult(sent.id)).result, DeadLettered) and r
            ),
            30,
            what="DeadLettered in the backend",
        )
        assert state.state == "FAILURE"
        assert state.failed()
        assert (state.result.entry_id, state.result.reason) == (entry.id, "HandlerNotFound")
        with pytest.raises(NotRegistered):
            state.get(timeout=5, propagate=True)
        wait_for(
            lambda: [e for e in events if e["type"] == "task-dead_lettered"],
            30,
            what="the task-dead_lettered event",
        )
        dead = [e for e in events if e["type"] == "task-dead_lettered"]
        assert [(e["uuid"], e["dead_letter_id"]) for e in dead] == [(sent.id, entry.id)], events
        still_working(stack, worker)

    assert (entry.message_id, entry.task_id, entry.task_name) == (
        "order-9-refund",
        sent.id,
        "shop.no_such_task",
    )
    assert (entry.args, entry.kwargs) == ([1, 2], {"currency": "EUR"})
    assert json.loads(entry.raw_body)[:2] == [[1, 2], {"currency": "EUR"}]
    assert entry.content_type == "application/json"
    assert entry.headers["task"] == "shop.no_such_task"
    assert entry.delivery_info["routing_key"] == f"q_{stack.prefix}"
    assert entry.detector == "on_unknown_task"
    assert entry.hostname


def test_a_pickle_body_at_a_json_worker_is_kept_raw_and_never_unpickled(postgres_stack):
    stack = postgres_stack
    marker = stack.dir / "unpickled"
    with stack.worker() as worker:
        sent = stack.producer.send_task("effect", (LeavesAMark(marker),), serializer="pickle")
        entry = the_entry(stack, DeadLetterReason.DESERIALIZATION_FAILED)
        still_working(stack, worker)

    assert not marker.exists()  # neither the worker nor the store loaded it
    assert entry.content_type == "application/x-python-serialize"
    assert entry.raw_body.startswith(b"\x80")  # the pickle itself, byte for byte
    assert str(marker).encode() in entry.raw_body
    assert (entry.args, entry.kwargs) == (None, None)
    assert (entry.task_id, entry.task_name, entry.message_id) == (sent.id, "effect", sent.id)
    assert "ContentDisallowed" in entry.exception_type
    assert stack.count("runs") == 1  # only the normal message ran


def test_a_body_that_does_not_decode_is_kept_raw(postgres_stack):
    stack = postgres_stack
    task_id = str(uuid.uuid4())
    with stack.worker() as worker:
        publish(
            stack,
            b'[[1, 2], {"broken": ',
            "application/json",
            {"id": task_id, "task": "effect", "lang": "py"},
        )
        entry = the_entry(stack, DeadLetterReason.DESERIALIZATION_FAILED)
        still_working(stack, worker)

    assert entry.raw_body == b'[[1, 2], {"broken": '
    assert (entry.content_type, entry.content_encoding) == ("application/json", "utf-8")
    assert (entry.message_id, entry.task_id, entry.task_name) == (task_id, task_id, "effect")
    assert (entry.args, entry.kwargs) == (None, None)
    assert entry.detector == "on_decode_error"
    assert stack.count("runs") == 1


def test_a_message_that_is_no_task_at_all_is_dead_lettered(postgres_stack):
    stack = postgres_stack
    with stack.worker() as worker:
        publish(stack, b'{"hello": "world"}', "application/json", {})
        entry = the_entry(stack, DeadLetterReason.HANDLER_NOT_FOUND)
        still_working(stack, worker)

    assert entry.raw_body == b'{"hello": "world"}'
    assert (entry.task_id, entry.task_name) == (None, None)
    assert entry.message_id == entry.delivery_info["delivery_tag"]  # the broker's tag
    assert entry.detector == "on_unknown_message"
    assert "not a Celery task message" in entry.exception_message


def test_a_message_expired_on_arrival_is_dead_lettered_not_just_revoked(postgres_stack):
    stack = postgres_stack
    backend = require("redis")
    expired_at = datetime.now(timezone.utc) - timedelta(seconds=5)
    with stack.worker(RT_BACKEND=backend) as worker:
        task_id = publish_expired(stack, expired_at)
        entry = the_entry(stack, DeadLetterReason.MESSAGE_EXPIRED)
        # REVOKED, as plain Celery stores an expired message, and a ready state: the first
        # one an AsyncResult sees must already carry the dead letter.
        seen = []

        def revoked() -> Any:
            result = results(backend).AsyncResult(task_id)
            seen.append(result.state)
            return result.state == "REVOKED" and result

        state = wait_for(revoked, 30, what="REVOKED")
        assert isinstance(state.result, DeadLettered)
        assert isinstance(state.result, TaskRevokedError)
        assert (state.result.entry_id, state.result.reason) == (entry.id, "MessageExpired")
        assert not state.failed()  # as on plain Celery: an expired task is revoked
        with pytest.raises(DeadLettered):
            state.get(timeout=5)
        assert set(seen) <= {"PENDING", "REVOKED"}
        still_working(stack, worker)
        assert stack.count("runs") == 1  # the normal message only

        stack.reliable.dead_letters.replay(entry.id)  # runs now, without the old expires
        stack.reliable.relay.drain()
        wait_for(
            lambda: (r := stack.status(task_id, "effect")) and r.status.value == "completed",
            60,
            what="the replayed message",
        )

    assert (entry.message_id, entry.task_name, entry.args) == (task_id, "effect", [None])
    assert json.loads(entry.raw_body)[0] == [None]
    assert entry.detector == "expires"
    assert expired_at.isoformat()[:19] in entry.exception_message
    assert stack.count("runs") == 2


def test_a_message_that_expires_while_it_waits_for_its_eta_is_dead_lettered(postgres_stack):
    stack = postgres_stack
    with stack.worker() as worker:
        still_working(stack, worker)  # consuming: RabbitMQ hands it over before it expires
        deadline = datetime.now(timezone.utc) + timedelta(seconds=1.5)
        sent = stack.producer.send_task("effect", (None,), countdown=3, expires=deadline)
        entry = the_entry(stack, DeadLetterReason.MESSAGE_EXPIRED)
        still_working(stack, worker)

    assert (entry.message_id, entry.task_id, entry.args) == (sent.id, sent.id, [None])
    assert stack.count("runs") == 2  # the two normal messages, never the expired one


@pytest.mark.parametrize("bad", ["unknown-task", "expired"])
def test_a_message_waits_on_the_broker_while_the_store_is_unreachable(postgres_stack, bad):
    stack = postgres_stack
    link = FaultyLink.to(stack.db)
    try:
        with stack.worker(RT_DB=link.url_for(stack.db)) as worker:
            still_working(stack, worker)
            link.cut()
            if bad == "expired":
                publish_expired(stack, datetime.now(timezone.utc) - timedelta(seconds=5))
            else:
                stack.producer.send_task("shop.no_such_task", (7,))
            wait_for(
                lambda: "the store is unavailable" in worker.output(),
                60,
                what="the worker to requeue the message",
            )
            assert stack.reliable.dead_letters.count() == 0
            link.restore()
            reason = {
                "expired": DeadLetterReason.MESSAGE_EXPIRED,
                "unknown-task": DeadLetterReason.HANDLER_NOT_FOUND,
            }[bad]
            entry = the_entry(stack, reason)
            still_working(stack, worker)
    finally:
        link.close()
    assert entry.args == ([None] if bad == "expired" else [7])
    assert stack.count("runs") == 2  # the two normal messages
