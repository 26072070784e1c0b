"""What the intake reads of a raw broker message, and what it finds Celery would fail on.

The intake (``celery_reliable.intake``) stores messages that never reach a task body. Such
a message may be anything a sender could publish: every header is read defensively, and
nothing is ever unpickled (arguments are decoded only with the content types the worker
accepts, minus pickle).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import timezone
from typing import Any

from celery.utils.time import maybe_iso8601
from kombu.serialization import loads, prepare_accept_content
from kombu.utils import json as kombu_json

from .dead_letters.types import FailedMessage
from .exceptions import InvalidMessageId
from .message import MESSAGE_ID_HEADER, validate_message_id
from .store.tables import KEY_LENGTH

_PICKLE = "application/x-python-serialize"
_SCALARS = (str, int, float, bool, type(None))


def header_text(value: object, length: int = KEY_LENGTH) -> str | None:
    """A column value from a header a sender could have set to anything (or to too much)."""
    if isinstance(value, (str, int)) and not isinstance(value, bool) and str(value).strip():
        return str(value).strip()[:length]
    return None


def _encodable(mapping: object) -> dict[str, Any]:
    """The entries that survive JSON: one odd header must not cost all the others."""
    kept: dict[str, Any] = {}
    for key, value in dict(mapping or {}).items() if isinstance(mapping, Mapping) else ():
        try:
            kombu_json.dumps(value)  # type: ignore[no-untyped-call]
        except (TypeError, ValueError):
            continue
        kept[str(key)] = value
    return kept


def _delivery_info(message: Any) -> dict[str, Any]:
    """Where the message came from, in the keys Celery's requests use, plus its properties."""
    info = message.delivery_info or {}
    properties = message.properties or {}
    return {
        "exchange": info.get("exchange"),
        "routing_key": info.get("routing_key"),
        "redelivered": info.get("redelivered", False),
        "priority": properties.get("priority", info.get("priority")),
        "delivery_tag": header_text(message.delivery_tag),
        "properties": {k: v for k, v in properties.items() if isinstance(v, _SCALARS)},
    }


def _safe_payload(message: Any, accept_content: Any) -> Any:
    """The decoded body when a content type the worker accepts (never pickle) allows it."""
    safe = prepare_accept_content(accept_content) - {_PICKLE}  # type: ignore[no-untyped-call]
    if message.content_type not in safe:
        return None
    try:
        return loads(  # type: ignore[no-untyped-call]
            message.body, message.content_type, message.content_encoding, accept=safe
        )
    except Exception:  # undecodable: the raw body is kept anyway
        return None


def _arguments(payload: Any) -> tuple[list[Any] | None, dict[str, Any] | None]:
    """(args, kwargs) of a protocol 2 body ``[args, kwargs, embed]`` or a protocol 1 dict."""
    if isinstance(payload, (list, tuple)) and len(payload) >= 2:
        args, kwargs = payload[0], payload[1]
    elif isinstance(payload, dict):
        args, kwargs = payload.get("args"), payload.get("kwargs")
    else:
        return None, None
    if isinstance(args, (list, tuple)) and isinstance(kwargs, dict):
        return list(args), dict(kwargs)
    return None, None


def _message_id(headers: Mapping[str, Any], payload: Any, message: Any) -> str:
    """The business key if valid, else the task id, else the broker's own message id or tag."""
    try:
        return validate_message_id(headers.get(MESSAGE_ID_HEADER), source="header")
    except InvalidMessageId:
        pass
    for candidate in (
        headers.get("id"),
        payload.get("id") if isinstance(payload, dict) else None,
        (message.properties or {}).get("message_id"),
        message.delivery_tag,
    ):
        found = header_text(candidate)
        if found is not None:
            return found
    return "unknown"


def raw_body(message: Any) -> bytes:
    """The body as it was published, byte for byte.

    py-amqp decodes a body with its ``content_encoding`` when it can (its channels'
    ``auto_decode``): encoded back with the same codec it is the published bytes again;
    with UTF-8 instead, a Latin-1 body would come out different.
    """
    body = message.body
    if isinstance(body, bytes):
        return body
    text = str(body)
    try:
        return text.encode(message.content_encoding or "utf-8")
    except (LookupError, UnicodeError, TypeError):
        return text.encode("utf-8", "replace")


def failed_message(
    message: Any,
    accept_content: Any,
    hostname: str | None,
    arguments: tuple[Any, Any] | None = None,
) -> FailedMessage:
    """What can be kept of a raw broker message: always the raw body and where it came from.

    ``arguments`` are Celery's own decoding, when it did decode; otherwise the body is
    decoded here, safely (a disallowed content type or a body that fails to decode leaves
    the arguments None: the raw body is what is kept then).
    """
    headers = _encodable(message.headers)
    payload = _safe_payload(message, accept_content) if arguments is None else None
    args, kwargs = arguments if arguments is not None else _arguments(payload)
    task = headers.get("task") or (payload.get("task") if isinstance(payload, dict) else None)
    return FailedMessage(
        message_id=_message_id(headers, payload, message),
        task_id=header_text(headers.get("id")),
        task_name=header_text(task),
        args=args,
        kwargs=kwargs,
        headers=headers,
        delivery_info=_delivery_info(message),
        raw_body=raw_body(message),
        content_type=header_text(message.content_type, 128),
        content_encoding=header_text(message.content_encoding, 64),
        hostname=header_text(hostname),
    )


def _time_limit(value: object) -> bool:
    """A time limit Celery's pool can use: none, or a finite number of seconds >= 0."""
    if value is None:
        return True
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return math.isfinite(value) and value >= 0


def _moment(value: object) -> bool:
    """An ``eta`` Celery can schedule: parses, and converts to a system-time timestamp."""
    try:
        parsed = maybe_iso8601(value)
        if parsed is not None:
            aware = parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)
            aware.astimezone().timestamp()
    except (TypeError, ValueError, AttributeError, OverflowError):
        return False
    return True


def task_message_problem(message: Any, body: Any) -> str | None:
    """What makes a message of a registered task unusable for Celery, or None.

    Celery's strategy and request read these fields without checking them. A missing or
    non-string ``id``, a body that is not ``[args, kwargs, embed]``, a body that is no
    container at all (no content type: raw bytes) raise in the consumer, which takes the
    exception for a lost connection: the message is restored and comes back for ever, the
    queue blocked behind it, or the worker exits. Arguments that are not a list, keyword
    arguments or ``embed`` that are not a mapping, a time limit that is not a number fail
    later, in the pool, as a plain task failure that nothing keeps; an ``eta`` that cannot
    be converted to a timestamp is rejected and dropped. ``body`` is the protocol 1 body
    Celery decoded, or None for protocol 2; decoding errors propagate (Celery reports them).
    """
    payload = message.payload if body is None else body
    headers = message.headers if isinstance(message.headers, Mapping) else {}
    if isinstance(payload, Mapping) and (body is not None or "args" in payload):
        # protocol 1 (its fields are in the body), or a "hybrid" protocol 2 body (they are
        # in the body and the headers, the headers win)
        fields: Mapping[str, Any] = payload if body is not None else {**payload, **headers}
        args, kwargs, embed = payload.get("args", ()), payload.get("kwargs", {}), None
    elif isinstance(payload, (list, tuple)) and len(payload) == 3:
        fields = headers
        args, kwargs, embed = payload
    else:
        return f"the body is not [args, kwargs, embed] but {type(payload).__name__}"
    task_id = fields.get("id")
    if not isinstance(task_id, str) or not task_id:
        return f"the task id must be a non-empty string, not {task_id!r:.100}"
    if not isinstance(args, (list, tuple)):
        return f"the arguments must be a list, not {type(args).__name__}"
    for name, value, optional in (("keyword arguments", kwargs, False), ("embed", embed, True)):
        if not (value is None and optional) and not (
            isinstance(value, Mapping) and all(isinstance(key, str) for key in value)
        ):
            return f"the {name} must be a mapping with string keys, not {value!r:.100}"
    limits = fields.get("timelimit")  # Celery ignores an empty one
    if limits and not (
        isinstance(limits, (list, tuple)) and len(limits) == 2 and all(map(_time_limit, limits))
    ):
        return f"timelimit must be two numbers of seconds, not {limits!r:.100}"
    if not _moment(fields.get("eta")):
        return f"eta is not a time Celery can schedule: {fields.get('eta')!r:.100}"
    return None
