"""Publishing a batch of stored messages, and knowing which ones the broker has.

Adapters per transport, behind one small interface the relay uses:

- RabbitMQ (``amqp``): publisher confirms, waited for once per batch rather than once per
  message, and mandatory publishing. A row counts as sent only when its delivery tag was
  acked and the broker did not return it as unroutable; a nack or a return fails it.
- Redis: pushes are pipelined through kombu's ``Producer.batch()`` (kombu >= 5.7) and
  flushed when the batch ends; the pipeline's reply is the confirmation.
- Anything else: kombu's ordinary publish; its return is the confirmation.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, Protocol

CONFIRM_TIMEOUT = 30.0

try:  # kombu >= 5.7: a pipelined batch whose flush failed; which pushes landed is unknown
    from kombu.exceptions import BatchPublishError

    BROKER_UNCERTAIN: tuple[type[BaseException], ...] = (BatchPublishError,)
except ImportError:  # pragma: no cover - older kombu publishes immediately
    BROKER_UNCERTAIN = ()


class BatchPublisher(Protocol):
    """Publishes inside ``batch()``; ``confirmed()`` says which of the ids the broker has."""

    #: Ask the broker to return what no queue would receive (where it can).
    mandatory: bool

    def batch(self, producer: Any, size: int) -> contextlib.AbstractContextManager[Any]: ...

    def published(self, row_id: int, task_id: str) -> None: ...

    def check_exchange(self, channel: Any, exchange: str) -> None:
        """Raise (a channel error) now if ``exchange`` does not exist, where it can be told."""

    def confirmed(self) -> tuple[list[int], list[int]]:
        """(acked ids, nacked ids) of everything published since the last call."""


class ImmediatePublisher:
    """A publish that returned is on the broker (Redis replies, memory transport)."""

    mandatory = False

    def __init__(self) -> None:
        self._ids: list[int] = []

    @contextlib.contextmanager
    def batch(self, producer: Any, size: int) -> Iterator[None]:
        group = getattr(producer, "batch", None)  # kombu >= 5.7: pipelined on Redis
        # Room for every operation of the batch (a push may bring an expiry along), so it
        # is flushed once, when the batch ends.
        with group(max_size=4 * size + 16) if group else contextlib.nullcontext():
            yield

    def published(self, row_id: int, task_id: str) -> None:
        self._ids.append(row_id)

    def check_exchange(self, channel: Any, exchange: str) -> None:
        """Virtual transports keep exchanges per process: nothing reliable to check."""

    def confirmed(self) -> tuple[list[int], list[int]]:
        ids, self._ids = self._ids, []
        return ids, []


class ConfirmingPublisher:
    """RabbitMQ publisher confirms for a whole batch at once, and returned messages."""

    mandatory = True

    def __init__(self, connection: Any) -> None:
        self.connection = connection
        channel = connection.default_channel
        channel.confirm_select()
        channel.events["basic_ack"].add(self._on_ack)
        channel.events["basic_nack"].add(self._on_nack)
        channel.events["basic_return"].add(self._on_return)
        self._tag = 0
        self._pending: dict[int, int] = {}  # delivery tag -> row id
        self._rows_by_task: dict[str, int] = {}  # task id -> row id, to place a return
        self._returned: set[int] = set()
        self._acked: list[int] = []
        self._nacked: list[int] = []

    def batch(self, producer: Any, size: int) -> contextlib.AbstractContextManager[Any]:
        return contextlib.nullcontext()

    def check_exchange(self, channel: Any, exchange: str) -> None:
        # A publish to a missing exchange makes RabbitMQ close the channel later, while the
        # batch waits for confirms, when nobody can say which message did it. A passive
        # declare fails at once, for this message.
        channel.exchange_declare(exchange, "direct", passive=True)

    def published(self, row_id: int, task_id: str) -> None:
        self._tag += 1  # the broker numbers confirms 1, 2, ... per channel
        self._pending[self._tag] = row_id
        self._rows_by_task[task_id] = row_id

    def confirmed(self) -> tuple[list[int], list[int]]:
        while self._pending:
            self.connection.drain_events(timeout=CONFIRM_TIMEOUT)
        # A returned message is acked too (it was handled: dropped): it failed all the same.
        acked = [i for i in self._acked if i not in self._returned]
        nacked = self._nacked + [i for i in self._acked if i in self._returned]
        self._acked, self._nacked, self._returned = [], [], set()
        self._rows_by_task.clear()
        return acked, nacked

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


def publisher_for(connection: Any) -> BatchPublisher:
    if connection.transport.driver_type == "amqp":
        return ConfirmingPublisher(connection)
    return ImmediatePublisher()
