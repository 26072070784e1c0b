"""The transactional outbox: enqueue a Celery message in the caller's own transaction.

``enqueue`` writes the complete message (routing, headers and the body already serialized)
as a row through the caller's Session or Connection, so the message exists if and only if
that transaction commits. The row also holds the message as the producer's broker
transport sends it (``celery_reliable.wire``), so the relay (``celery_reliable.relay``)
later moves the stored bytes to the broker unchanged: everything that can fail about a
message fails here, before anything is written, where the caller can still react.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from datetime import datetime, timedelta
from functools import cached_property, lru_cache
from typing import Any

from celery import Celery, Signature, current_task
from celery.app.routes import MapRoute
from celery.utils import uuid
from celery.utils.nodenames import anon_nodename
from celery.utils.saferepr import saferepr
from kombu import serialization
from kombu.exceptions import EncodeError
from kombu.utils import json as kombu_json
from sqlalchemy import Connection, insert
from sqlalchemy.orm import Session

from . import wire
from .clock import utcnow
from .exceptions import EnqueueError, InvalidMessageId
from .message import MESSAGE_ID_HEADER, SENT_AT_HEADER, validate_message_id
from .settings import Settings
from .store.tables import Tables

try:
    from opentelemetry import propagate
except ImportError:  # pragma: no cover - the otel extra is optional
    propagate = None  # type: ignore[assignment]

#: Serializers that can run code when a message is read.
UNSAFE_SERIALIZERS = frozenset({"pickle", "yaml"})


class Outbox:
    """``reliable.outbox``: messages that exist if and only if the caller's transaction commits."""

    def __init__(self, app: Celery, tables: Tables, settings: Settings) -> None:
        self.app = app
        self.table = tables.outbox
        self.settings = settings

    def enqueue(
        self,
        session_or_connection: Session | Connection,
        signature: Signature,
        *,
        message_id: str | None = None,
        ordering_key: str | None = None,
        countdown: float | None = None,
        eta: datetime | None = None,
        **celery_options: Any,
    ) -> str:
        """Write ``signature`` as a message in the caller's transaction; return its message id.

        ``message_id`` (a business key such as ``order-42-receipt``) becomes the id the
        receiving ReliableTask's inbox deduplicates on; by default it is the new task id.
        ``countdown``/``eta`` hold the message in the store until it is due. Other keyword
        arguments are Celery's ``apply_async`` options (``queue``, ``priority``, ``expires``,
        ``headers``, ``serializer``, ...). Raises EnqueueError before writing anything when the
        task is unknown, the arguments cannot be serialized or the message is too large.
        """
        row = self.build_row(signature, message_id, ordering_key, countdown, eta, celery_options)
        session_or_connection.execute(insert(self.table).values(row))
        return str(row["message_id"])

    @cached_property
    def driver_type(self) -> str:
        """The producer app's broker transport, for which rows are prepared (``wire``)."""
        with self.app.connection_for_write() as connection:
            return str(connection.transport.driver_type)

    def build_row(
        self,
        signature: Signature,
        message_id: str | None,
        ordering_key: str | None,
        countdown: float | None,
        eta: datetime | None,
        celery_options: Mapping[str, Any],
    ) -> dict[str, Any]:
        if not isinstance(signature, Signature):
            raise EnqueueError(f"expected a signature such as task.s(...), got {signature!r}")
        options = {**signature.options, **celery_options}
        headers = dict(options.pop("headers", None) or {})
        task_id = str(options.pop("task_id", None) or uuid())
        plan = MessagePlan(self, signature.task, options)
        try:
            if message_id is not None:
                headers[MESSAGE_ID_HEADER] = validate_message_id(message_id)
            elif MESSAGE_ID_HEADER in headers:
                validate_message_id(headers[MESSAGE_ID_HEADER], source="header")
            if ordering_key is not None:
                validate_message_id(ordering_key, source="ordering_key")
        except InvalidMessageId as exc:
            raise EnqueueError(str(exc)) from exc
        return plan.row(
            task_id,
            tuple(signature.args),
            dict(signature.kwargs),
            headers,
            ordering_key=ordering_key,
            countdown=countdown,
            eta=eta,
        )


class MessagePlan:
    """The part of an outbox row that depends on the task and its options only.

    ``build_row`` makes one for each message. A batch (``DeadLetters.replay_batch``) makes
    one per task and options and calls :meth:`row` for each of its messages, so that the
    task lookup, the serializer check, the routing (unless a router function may look at
    the arguments), the calling task, the origin and the trace context are worked out once.
    What :meth:`row` returns is what ``build_row`` returns for the same message.
    """

    def __init__(self, outbox: Outbox, name: str, options: dict[str, Any]) -> None:
        """``options`` are ``apply_async``'s, without ``headers`` and ``task_id`` (given to
        each row); the plan takes them over. Raises EnqueueError for an unknown task or a
        refused serializer."""
        app = outbox.app
        task = app.tasks.get(name)
        if task is None:
            raise EnqueueError(f"task {name!r} is not registered with app {app.main!r}")
        serializer = options.pop("serializer", None) or task.serializer
        if serializer in UNSAFE_SERIALIZERS and not outbox.settings.outbox_allow_pickle:
            raise EnqueueError(
                f"serializer {serializer!r} can run code when read; set "
                "reliable_outbox_allow_pickle = True to allow it"
            )
        self.name, self.serializer = name, serializer
        self._amqp = amqp = app.amqp
        self._limit = outbox.settings.outbox_max_payload_bytes
        self._expires = options.pop("expires", None)
        self._ignore_result = options.pop("ignore_result", task.ignore_result)
        self._priority = options.get("priority")
        parent = current_task if current_task and current_task.request.id else None
        self._root_id = (parent.request.root_id or parent.request.id) if parent else None
        self._parent_id = parent.request.id if parent else None
        # What as_task_v2 would look up for every message (its origin, its repr limits).
        self._origin = anon_nodename()
        self._repr_levels = levels = app.conf.task_repr_maxlevels
        # Messages without positional or keyword arguments are common: their reprs, once.
        self._empty_reprs = _empty_reprs(amqp.argsrepr_maxsize, amqp.kwargsrepr_maxsize, levels)
        self._trace: dict[str, Any] = {}
        inject_trace_context(self._trace)
        self._wire_format = wire.format_for(outbox.driver_type, self._priority)
        self._options = options
        # Celery's routes from a mapping ignore the arguments; a router function may not.
        static = all(isinstance(route, MapRoute) for route in amqp.router.routes)
        self._static_route = _route(amqp, name, (), {}, dict(options)) if static else None

    def row(
        self,
        task_id: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        headers: dict[str, Any],
        *,
        ordering_key: str | None = None,
        countdown: float | None = None,
        eta: datetime | None = None,
        now: datetime | None = None,
    ) -> dict[str, Any]:
        """The outbox row of one message, created and sent at ``now`` (by default the
        current time). ``headers`` (the caller's, with the message id header if any,
        already validated) is taken over. ``args`` is a tuple and ``kwargs`` a dict, not
        a subclass, whose repr could differ (see ``_empty_reprs``)."""
        name, amqp = self.name, self._amqp
        now = now or utcnow()
        available_at = _due(now, countdown, eta)
        message = amqp.as_task_v2(
            task_id,
            name,
            args,
            kwargs,
            expires=self._expires,
            root_id=self._root_id,
            parent_id=self._parent_id,
            ignore_result=self._ignore_result,
            origin=self._origin,
            argsrepr=(
                saferepr(args, amqp.argsrepr_maxsize, maxlevels=self._repr_levels)
                if args
                else self._empty_reprs[0]
            ),
            kwargsrepr=(
                saferepr(kwargs, amqp.kwargsrepr_maxsize, maxlevels=self._repr_levels)
                if kwargs
                else self._empty_reprs[1]
            ),
        )
        try:
            content_type, content_encoding, body = serialization.dumps(  # type: ignore[no-untyped-call]
                message.body, serializer=self.serializer
            )
        except (EncodeError, TypeError, ValueError) as exc:
            raise EnqueueError(f"arguments of {name!r} cannot be serialized: {exc}") from exc
        data = body if isinstance(body, bytes) else body.encode(content_encoding or "utf-8")
        if len(data) > self._limit:
            raise EnqueueError(
                f"message for {name!r} is {len(data)} bytes; reliable_outbox_max_payload_bytes "
                f"is {self._limit}"
            )
        route = self._static_route or _route(self._amqp, name, args, kwargs, dict(self._options))
        queue, exchange, routing_key, delivery_mode = route
        properties = {**message.properties, "delivery_mode": delivery_mode}
        if self._priority is not None:
            properties["priority"] = self._priority
        headers.setdefault(SENT_AT_HEADER, now.timestamp())
        headers.update(self._trace)  # as inject_trace_context(headers) would
        try:
            encoded_headers = kombu_json.dumps({**message.headers, **headers})  # type: ignore[no-untyped-call]
        except TypeError as exc:
            raise EnqueueError(f"headers of {name!r} are not JSON-serializable: {exc}") from exc
        encoded_properties = kombu_json.dumps(properties)  # type: ignore[no-untyped-call]
        prepared = None
        if self._wire_format == wire.AMQP:
            try:
                prepared = wire.amqp_properties(
                    content_type, content_encoding, encoded_headers, encoded_properties
                )
            except struct.error as exc:  # an integer beyond AMQP's 64 bits, say
                raise EnqueueError(f"headers of {name!r} do not fit AMQP: {exc}") from exc
        return {
            "message_id": headers.get(MESSAGE_ID_HEADER, task_id),
            "task_id": task_id,
            "task_name": name,
            "queue": queue,
            "exchange": exchange,
            "routing_key": routing_key,
            "body": data,
            "content_type": content_type,
            "content_encoding": content_encoding,
            "headers": encoded_headers,
            "properties": encoded_properties,
            "wire_format": self._wire_format,
            "wire": prepared,
            "ordering_key": ordering_key,
            "status": "pending",
            "attempts": 0,
            "created_at": now,
            "available_at": available_at,
        }


def inject_trace_context(headers: dict[str, Any]) -> None:
    """Carry the caller's trace (W3C ``traceparent``) in the stored headers.

    The message is published later by the relay, outside the caller's span; with the
    context in its headers, Celery's OpenTelemetry instrumentation continues the web
    request's trace in the task. Without opentelemetry this does nothing.
    """
    if propagate is not None:
        propagate.inject(headers)


def _due(now: datetime, countdown: float | None, eta: datetime | None) -> datetime:
    if countdown is not None and eta is not None:
        raise EnqueueError("give countdown or eta, not both")
    if countdown is not None:
        if isinstance(countdown, bool) or not isinstance(countdown, (int, float)) or countdown < 0:
            raise EnqueueError(f"countdown must be a number of seconds >= 0, got {countdown!r}")
        return now + timedelta(seconds=countdown)
    if eta is not None:
        if not isinstance(eta, datetime) or eta.tzinfo is None:
            raise EnqueueError(f"eta must be a timezone-aware datetime, got {eta!r}")
        return max(eta, now)
    return now


def _route(
    amqp: Any, name: str, args: tuple[Any, ...], kwargs: dict[str, Any], options: dict[str, Any]
) -> tuple[str | None, str, str, int]:
    """Where Celery itself would send the message (same rules as ``send_task``)."""
    routed = amqp.router.route(options, name, args, kwargs)
    queue = routed.get("queue") or amqp.default_queue
    if isinstance(queue, str):
        queue = amqp.queues[queue]
    exchange, routing_key = routed.get("exchange"), routed.get("routing_key")
    exchange_name = getattr(exchange, "name", exchange)
    exchange_type = getattr(queue.exchange, "type", "direct")
    if (not exchange_name or not routing_key) and exchange_type == "direct":
        exchange_name, routing_key = "", queue.name
    else:
        exchange_name = exchange_name or queue.exchange.name
        routing_key = routing_key or queue.routing_key
    delivery_mode = int(getattr(queue.exchange, "delivery_mode", None) or 2)
    return queue.name, exchange_name or "", routing_key or "", delivery_mode


@lru_cache(maxsize=16)
def _empty_reprs(args_max: int, kwargs_max: int, levels: int) -> tuple[str, str]:
    """``as_task_v2``'s argsrepr and kwargsrepr of no arguments, for these repr limits."""
    return saferepr((), args_max, maxlevels=levels), saferepr({}, kwargs_max, maxlevels=levels)
