"""Known limits: garbage below the message level kills the worker before any hook runs.

The fuzz suite's messages are messages: a body, content type, encoding, headers and
properties, whatever their values. Two kinds of garbage are lower than that, in the
transport's own framing, and fail inside kombu or py-amqp before a consumer (Celery's or
celery_reliable's) sees a message. The worker exits with "Unrecoverable error"; a
RabbitMQ message stays queued and kills the next worker too. No dead letter can be made
of them: there is no message to keep. These tests document the behaviour and fail
(strict xfail) once an upstream release handles it, so the limit is not forgotten.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import amqp
import pytest

from celery_reliable.testing import wait_for
from tests.acceptance.conftest import Stack
from tests.support import require

pytestmark = pytest.mark.services


def survives(stack: Stack, publish: Any) -> None:
    """Publish the garbage, then a valid message: the worker must run it, still alive."""
    with stack.worker() as worker:
        with stack.producer.connection_for_write() as conn:
            channel = conn.default_channel
            stack.producer.amqp.queues[f"q_{stack.prefix}"](channel).declare()
            publish(channel, f"q_{stack.prefix}")
        message_id = stack.send("effect", None)

        def settled() -> bool:
            status = stack.status(message_id, "effect")
            return worker.proc.poll() is not None or bool(
                status and status.status.value == "completed"
            )

        wait_for(settled, 60, what="the valid message, or the worker's end")
        assert worker.proc.poll() is None, "the worker exited"


@pytest.fixture
def rabbitmq_stack(tmp_path: Any) -> Any:
    stack = Stack(require("rabbitmq"), require("postgresql"), tmp_path)
    yield stack
    stack.close()


@pytest.fixture
def redis_stack(tmp_path: Any) -> Any:
    stack = Stack(require("redis"), require("postgresql"), tmp_path)
    yield stack
    stack.close()


@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="py-amqp decodes a content type that is not UTF-8 while reading the frame and "
    "raises UnicodeDecodeError (celery/py-amqp#277)",
)
def test_rabbitmq_a_content_type_that_is_not_utf8(rabbitmq_stack: Stack):
    def publish(channel: Any, queue: str) -> None:
        headers = {"task": "effect", "id": str(uuid.uuid4())}
        body = json.dumps([[None], {}, {}]).encode()
        message = amqp.Message(body, content_type=b"application/\xff", application_headers=headers)
        channel.basic_publish(message, exchange="", routing_key=queue)

    survives(rabbitmq_stack, publish)


@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="kombu's Redis transport parses its list entry as JSON before any consumer code "
    "and lets the error end the worker (as kombu#2421 for SQS)",
)
def test_redis_a_list_entry_that_is_not_kombus_json(redis_stack: Stack):
    def publish(channel: Any, queue: str) -> None:
        channel.client.lpush(queue, b"this is not a kombu message")

    survives(redis_stack, publish)
