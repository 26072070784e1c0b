"""Messages as a broker transport puts them on the wire, prepared when they are enqueued.

Publishing through kombu costs tens of microseconds per message in Python: decoding the
stored headers and properties, building the transport's message, serializing it again (an
AMQP header table, or the JSON envelope of kombu's Redis transport). That was the relay's
main per-message cost. So ``enqueue`` prepares the message for the producer app's transport
(``wire_format``) and the relay only moves bytes:

- ``"amqp"``: column ``wire`` holds the AMQP 0-9-1 content header's property flags and list
  (headers, content type, delivery mode, ...) exactly as py-amqp serializes them; the
  message is that and the row's body.
- ``"redis"``: the row's own columns are the pieces of the JSON envelope kombu's Redis
  transport pushes onto a list (the headers and properties are stored as kombu's JSON
  already), so :func:`redis_envelope` joins them, with a new delivery tag per publish (it
  keys the worker's ``unacked`` hash), without parsing or serializing anything. Such a
  row has no priority (a message with one takes kombu's path, which picks its list).

Both produce what kombu and py-amqp send for the same publish, byte for byte, so a worker
cannot tell a relayed message from one sent by ``apply_async``. A transport without a
format here, or a relay whose broker differs from the producer's, publishes the row's
columns through kombu as before.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from functools import lru_cache

from amqp import Message  # type: ignore[import-untyped]
from kombu.utils import json as kombu_json

REDIS, AMQP = "redis", "amqp"


def format_for(driver_type: str, priority: int | None) -> str | None:
    """The wire format to store for a kombu transport (``transport.driver_type``)."""
    if driver_type == "amqp":
        return AMQP
    if driver_type == "redis" and priority is None:
        return REDIS
    return None


def amqp_properties(
    content_type: str, content_encoding: str, headers: str, properties: str
) -> bytes:
    """The content header properties of the message publishing the stored columns sends.

    ``headers`` and ``properties`` are the stored JSON, decoded here as the relay decodes
    them for ``Producer.publish``; the message is built as kombu's pyamqp transport builds
    it (``Channel.prepare_message``) and serialized by py-amqp's own code.
    """
    decoded = kombu_json.loads(properties)  # type: ignore[no-untyped-call]
    message = Message(
        b"",
        priority=decoded.pop("priority", None) or 0,
        content_type=content_type,
        content_encoding=content_encoding,
        application_headers=kombu_json.loads(headers),  # type: ignore[no-untyped-call]
        **decoded,
    )
    return bytes(message._serialize_properties())


def redis_envelope(
    body: bytes,
    content_type: str,
    content_encoding: str,
    headers: str,
    properties: str,
    exchange: str,
    routing_key: str,
    delivery_tag: str,
) -> bytes:
    """What kombu's Redis transport LPUSHes for the stored columns of a ``"redis"`` row.

    kombu builds ``{"body", "content-encoding", "content-type", "headers", "properties"}``
    (``virtual.Channel.prepare_message``), adds the delivery info, the priority, the body
    encoding and a delivery tag to the properties (``_inplace_augment_message``) and dumps
    it with its JSON, whose output for the stored headers and properties is the stored
    text itself: so the envelope is that text, joined.
    """
    return "".join(
        (
            '{"body": "',
            base64.b64encode(body).decode("ascii"),
            '", "content-encoding": ',
            _json(content_encoding),
            ', "content-type": ',
            _json(content_type),
            ', "headers": ',
            headers,
            ', "properties": ',
            properties[:-1],  # never empty: the outbox stores the delivery mode
            ', "delivery_info": {"exchange": ',
            _json(exchange),
            ', "routing_key": ',
            _json(routing_key),
            '}, "priority": 0, "body_encoding": "base64", "delivery_tag": "',
            delivery_tag,
            '"}}',
        )
    ).encode("utf-8")


def delivery_tags() -> Iterator[str]:
    """Random (version 4) UUID strings, as kombu's delivery tags, three times faster.

    ``str(uuid.uuid4())`` costs about 4 us, a noticeable share of a relayed message; these
    come from one ``os.urandom`` call per 512, formatted by hand. Use one per batch, so that
    no random bytes outlive it (in a process that might fork).
    """
    while True:
        chunk = os.urandom(16 * 512).hex()
        for start in range(0, len(chunk), 32):
            h = chunk[start : start + 32]
            yield f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:]}"


#: The RFC 4122 variant bits (10xx) over a random hex digit.
_VARIANT = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}


@lru_cache(maxsize=1024)
def _json(text: str) -> str:
    """A JSON string literal (content types, exchanges and queues repeat: cached)."""
    return json.dumps(text)


class PreparedMessage(Message):  # type: ignore[misc]
    """An AMQP message whose content header properties were serialized at enqueue.

    py-amqp's frame writer asks the message for its serialized properties; this one has
    them already, so publishing costs no header-table encoding.
    """

    def __init__(self, body: bytes, properties: bytes) -> None:
        super().__init__(body)
        self._serialized = properties

    def _serialize_properties(self) -> bytes:
        return self._serialized
