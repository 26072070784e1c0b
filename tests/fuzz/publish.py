"""Publishing straight onto a worker's task queue: no Celery, no kombu producer.

Nothing on the way fills in a content type, an encoding or headers, or refuses a value:
the AMQP messages are py-amqp's own, and on Redis the list entries are written by hand in
kombu's Redis message format, so a header can even hold bytes that are not UTF-8.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterable
from typing import Any

import amqp

from .messages import Malformed

#: Redis list entries pushed per round trip.
PIPELINE = 500


def publish_all(stack: Any, messages: Iterable[Malformed]) -> None:
    """Put ``messages`` on the stack's task queue, in order, on one connection."""
    queue = f"q_{stack.prefix}"
    with stack.producer.connection_for_write() as conn:
        channel = conn.default_channel
        stack.producer.amqp.queues[queue](channel).declare()  # as the worker declares it
        if conn.transport.driver_type == "redis":
            pipe = channel.client.pipeline(transaction=False)
            for n, message in enumerate(messages, 1):
                pipe.lpush(queue, redis_entry(message, queue))
                if n % PIPELINE == 0:
                    pipe.execute()
            pipe.execute()
        else:
            for message in messages:
                channel.basic_publish(amqp_message(message), exchange="", routing_key=queue)
            # A round trip: raises if RabbitMQ refused a message and closed the connection
            # (publishing does not wait for an answer).
            channel.queue_declare(queue, passive=True)


def amqp_message(message: Malformed) -> amqp.Message:
    properties = dict(message.properties)
    if message.content_type is not None:
        properties["content_type"] = message.content_type
    if message.content_encoding is not None:
        properties["content_encoding"] = message.content_encoding
    return amqp.Message(message.body, application_headers=message.headers, **properties)


def redis_entry(message: Malformed, queue: str) -> bytes:
    """The message as kombu's Redis transport stores it, with any bytes spliced in raw."""
    raw: dict[str, bytes] = {}

    def mark_bytes(value: Any) -> Any:
        if isinstance(value, bytes):
            key = f"@raw-{uuid.uuid4().hex}@"
            raw[key] = value
            return key
        if isinstance(value, dict):
            return {k: mark_bytes(v) for k, v in value.items()}
        if isinstance(value, list):
            return [mark_bytes(v) for v in value]
        return value

    entry = {
        "body": base64.b64encode(message.body).decode(),
        "content-encoding": message.content_encoding,
        "content-type": mark_bytes(message.content_type),
        "headers": mark_bytes(message.headers),
        "properties": {
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
            "priority": 0,
            "delivery_info": {"exchange": "", "routing_key": queue},
            **message.properties,
        },
    }
    data = json.dumps(entry).encode()
    for key, value in raw.items():
        data = data.replace(key.encode(), value)
    return data
