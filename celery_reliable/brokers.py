"""Publishing a batch of outbox rows, and knowing which ones the broker has.

One publisher per broker connection, behind one small interface the relay uses:

- RabbitMQ (``amqp``): publisher confirms, waited for once per batch rather than once per
  message, and mandatory publishing. A row counts as sent only when its delivery tag was
  acked and the broker did not return it as unroutable; a nack or a return refuses it.
- Redis: the batch's pushes are pipelined and sent when the batch ends; the pipeline's
  reply for each push is that row's confirmation (an error reply refuses the row alone).
- Anything else: kombu's ordinary publish; its return is the confirmation.

A row prepared for the publisher's transport (``celery_reliable.wire``) is published as
stored bytes (the fast path: no message is built, nothing is serialized). Other rows go
through kombu's ``Producer.publish`` from their columns, in the same order: rows written
before the wire columns existed or prepared for another transport, and on Redis rows with a
priority, routed through a named exchange (whose bindings kombu resolves) or to a queue
declared to expire.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, Protocol

from celery import Celery
from kombu.common import maybe_declare
from kombu.messaging import Producer
from kombu.utils import json as kombu_json

from . import wire
from .store.outbox_rows import Claimed

CONFIRM_TIMEOUT = 30.0


class BatchPublisher(Protocol):
    """Publishes rows inside ``batch()``; ``confirmed()`` says which ones the broker has."""

    def batch(self) -> contextlib.AbstractContextManager[None]:
        """A batch of publishes; leaving it sends what is still buffered."""

    def publish(self, row: Claimed) -> None:
        """Publish one claimed row; raise if the broker or this message failed."""

    def confirmed(self) -> tuple[list[int], dict[int, str]]:
        """(ids the broker has, {id: why the broker refused it}) since the last call."""


class _Publisher:
    """What every transport shares: the channel, declaring queues, kombu's own publish."""

    #: Ask the broker to return what no queue would receive (where it can).
    mandatory = False

    def __init__(self, connection: Any, app: Celery) -> None:
        self.connection = connection
        self.app = app
        self.channel = connection.default_channel
        self.producer = Producer(self.channel)  # type: ignore[no-untyped-call]
        self._declared: set[str] = set()  # queue names, once per connection as send_task does
        self._acked: list[int] = []
        self._refused: dict[int, str] = {}

    def batch(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def confirmed(self) -> tuple[list[int], dict[int, str]]:
        acked, refused, self._acked, self._refused = self._acked, self._refused, [], {}
        return acked, refused

    def _declare(self, queue: str | None) -> None:
        if queue and queue not in self._declared:
            maybe_declare(self.app.amqp.queues[queue], self.channel)  # type: ignore[no-untyped-call]
            self._declared.add(queue)

    def _publish_columns(self, row: Claimed) -> None:
        """The slow path: kombu builds the message from the row's columns."""
        self.producer.publish(
            row.body,
            exchange=row.exchange,
            routing_key=row.routing_key,
            content_type=row.content_type,
            content_encoding=row.content_encoding,
            headers=kombu_json.loads(row.headers),  # type: ignore[no-untyped-call]
            retry=False,
            mandatory=self.mandatory,
            **kombu_json.loads(row.properties),  # type: ignore[no-untyped-call]
        )


class ImmediatePublisher(_Publisher):
    """A publish that returned is on the broker (the memory transport, ...)."""

    def publish(self, row: Claimed) -> None:
        self._declare(row.queue)
        self._publish_columns(row)
        self._acked.append(row.id)


class RedisPublisher(_Publisher):
    """LPUSHes of envelopes joined from the stored message, pipelined: one round trip."""

    def __init__(self, connection: Any, app: Celery) -> None:
        super().__init__(connection, app)
        self._pipeline: Any = None
        self._pushed: list[int] = []  # row ids in the pipeline, in order
        self._tags = wire.delivery_tags()

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        with self.channel.conn_or_acquire() as client:
            self._pipeline = client.pipeline(transaction=False)
            self._tags = wire.delivery_tags()
            try:
                yield
                self._flush()
            finally:
                self._pipeline.reset()
                self._pipeline, self._pushed = None, []

    def publish(self, row: Claimed) -> None:
        self._declare(row.queue)
        # kombu's Redis transport: the default exchange names the list by the routing key
        # (a "redis" row has no priority, so no priority list), and a queue declared to
        # expire gets its expiry refreshed with every push: kombu's path does that.
        if (
            row.wire_format == wire.REDIS
            and not row.exchange
            and row.routing_key not in self.channel._expires
        ):
            envelope = wire.redis_envelope(
                row.body,
                row.content_type,
                row.content_encoding,
                row.headers,
                row.properties,
                row.exchange,
                row.routing_key,
                next(self._tags),
            )
            self._pipeline.lpush(row.routing_key, envelope)
            self._pushed.append(row.id)
        else:
            self._flush()  # what was pushed before goes first: ordering keys
            self._publish_columns(row)
            self._acked.append(row.id)

    def _flush(self) -> None:
        """Send the pipeline. A connection error propagates: which pushes landed is unknown."""
        if not self._pushed:
            return
        ids, self._pushed = self._pushed, []
        for row_id, reply in zip(ids, self._pipeline.execute(raise_on_error=False), strict=True):
            if isinstance(reply, Exception):
                self._refused[row_id] = f"{type(reply).__name__}: {reply}"
            else:
                self._acked.append(row_id)


class ConfirmingPublisher(_Publisher):
    """RabbitMQ publisher confirms for a whole batch at once, and returned messages."""

    mandatory = True

    def __init__(self, connection: Any, app: Celery) -> None:
        super().__init__(connection, app)
        channel = self.channel
        channel.confirm_select()
        channel.events["basic_ack"].add(self._on_ack)
        channel.events["basic_nack"].add(self._on_nack)
        channel.events["basic_return"].add(self._on_return)
        self._tag = 0
        self._pending: dict[int, int] = {}  # delivery tag -> row id
        self._rows_by_task: dict[str, int] = {}  # task id -> row id, to place a return
        self._returned: set[int] = set()
        self._nacked: list[int] = []
        self._checked: set[str] = set()  # exchanges known to exist, in this batch

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        self._checked.clear()
        yield

    def publish(self, row: Claimed) -> None:
        self._declare(row.queue)
        if row.exchange and row.exchange not in self._checked:
            # A publish to a missing exchange makes RabbitMQ close the channel later, while
            # the batch waits for confirms, when nobody can say which message did it. A
            # passive declare fails at once, for this message.
            self.channel.exchange_declare(row.exchange, "direct", passive=True)
            self._checked.add(row.exchange)
        if row.wire_format == wire.AMQP and row.wire is not None:
            self.channel.basic_publish(
                wire.PreparedMessage(row.body, row.wire),
                exchange=row.exchange,
                routing_key=row.routing_key,
                mandatory=True,
            )
        else:
            self._publish_columns(row)
        self._tag += 1  # the broker numbers confirms 1, 2, ... per channel
        self._pending[self._tag] = row.id
        self._rows_by_task[row.task_id] = row.id

    def confirmed(self) -> tuple[list[int], dict[int, str]]:
        while self._pending:
            self.connection.drain_events(timeout=CONFIRM_TIMEOUT)
        # A returned message is acked too (it was handled: dropped): it failed all the same.
        for row_id in self._nacked:
            self._refused[row_id] = "the broker did not take it (nack)"
        for row_id in self._returned:
            self._refused[row_id] = "the broker returned it as unroutable"
        self._acked = [i for i in self._acked if i not in self._refused]
        self._nacked, self._returned = [], set()
        self._rows_by_task.clear()
        return super().confirmed()

    def _settle(self, tag: int, multiple: bool, into: list[int]) -> None:
        tags = [t for t in self._pending if t <= tag] if multiple else [tag]
        for t in tags:
            if t in self._pending:
                into.append(self._pending.pop(t))

    def _on_ack(self, tag: int, multiple: bool) -> None:
        self._settle(tag, multiple, self._acked)

    def _on_nack(self, tag: int, multiple: bool) -> None:
        self._settle(tag, multiple, self._nacked)

    def _on_return(self, exc: Any, exchange: str, routing_key: str, message: Any) -> None:
        row_id = self._rows_by_task.get(str((message.headers or {}).get("id")))
        if row_id is not None:
            self._returned.add(row_id)


def publisher_for(connection: Any, app: Celery) -> BatchPublisher:
    driver = connection.transport.driver_type
    if driver == "amqp":
        return ConfirmingPublisher(connection, app)
    if driver == "redis":
        return RedisPublisher(connection, app)
    return ImmediatePublisher(connection, app)
