"""Messages prepared at enqueue are byte for byte what kombu would publish for the row."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from amqp import Message
from kombu import Connection, Producer
from kombu.utils import json as kombu_json

from celery_reliable import EnqueueError, Reliable, wire
from tests.support import make_app

BODY = '[["h\u00e9llo \u2603"], {}, {"callbacks": null}]'.encode()
HEADERS = kombu_json.dumps({"task": "t", "id": "1", "argsrepr": "('h\u00e9llo',)", "retries": 0})


def test_the_redis_envelope_is_what_kombus_virtual_transports_push():
    properties = {"correlation_id": "1", "reply_to": "r", "delivery_mode": 2}
    captured: list[dict[str, Any]] = []
    with Connection("memory://") as conn:  # the same prepare/augment code as Redis
        channel = conn.default_channel
        channel._put = lambda queue, message, **kwargs: captured.append(message)
        Producer(channel).publish(
            BODY,
            routing_key="q",
            content_type="application/json",
            content_encoding="utf-8",
            headers=kombu_json.loads(HEADERS),
            **properties,
        )
    (message,) = captured
    envelope = wire.redis_envelope(
        BODY,
        "application/json",
        "utf-8",
        HEADERS,
        kombu_json.dumps(properties),
        "",
        "q",
        message["properties"]["delivery_tag"],
    )
    assert envelope == kombu_json.dumps(message).encode()  # what the Redis transport LPUSHes


def test_amqp_properties_are_what_py_amqp_serializes_for_kombus_message():
    properties = {"correlation_id": "1", "reply_to": "r", "delivery_mode": 2, "priority": 3}
    kombus = Message(
        BODY,
        priority=3,
        content_type="application/json",
        content_encoding="utf-8",
        application_headers=kombu_json.loads(HEADERS),
        correlation_id="1",
        reply_to="r",
        delivery_mode=2,
    )
    stored = wire.amqp_properties(
        "application/json", "utf-8", HEADERS, kombu_json.dumps(properties)
    )
    assert stored == kombus._serialize_properties()
    assert wire.PreparedMessage(BODY, stored)._serialize_properties() == stored


def test_a_message_with_a_priority_is_not_prepared_for_redis():
    assert wire.format_for("redis", None) == wire.REDIS
    assert wire.format_for("redis", 5) is None  # kombu picks the priority list
    assert wire.format_for("amqp", 5) == wire.AMQP
    assert wire.format_for("memory", None) is None


def test_delivery_tags_are_distinct_version_4_uuids_like_kombus():
    tags = wire.delivery_tags()
    drawn = [next(tags) for _ in range(2000)]  # across a refill of the random bytes
    assert len(set(drawn)) == len(drawn)
    for tag in drawn:
        parsed = uuid.UUID(tag)
        assert (str(parsed), parsed.version, parsed.variant) == (tag, 4, uuid.RFC_4122)


def test_headers_that_amqp_cannot_carry_are_refused_at_enqueue(tmp_path):
    app = make_app("amqp://guest@127.0.0.1//", f"sqlite:///{tmp_path / 's.db'}", "w_")
    app.task(name="w.ship", shared=False)(_ship)
    outbox = Reliable.of(app).outbox  # preparing a row connects to nothing
    row = outbox.build_row(app.signature("w.ship"), None, None, None, None, {})
    assert row["wire_format"] == wire.AMQP
    with pytest.raises(EnqueueError, match="do not fit AMQP"):
        outbox.build_row(app.signature("w.ship"), None, None, None, None, {"headers": {"n": 2**70}})


def _ship() -> None:
    """Enqueued, never run."""
