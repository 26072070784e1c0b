"""An entry's row: built from a failed message, made storable, fitted to a statement, read back.

Whatever a sender put in a message ends up in a row, so every value is made one that every
store accepts; on MySQL/MariaDB a row of megabytes is cut to what one statement can carry.
A row that could never be written would keep its message out of the store for good: the
intake would take each refusal for an unreachable store and requeue the message for ever.
"""

from __future__ import annotations

import json
import logging
import traceback as traceback_module
from collections.abc import Mapping
from typing import Any

from kombu.utils import json as kombu_json

from celery_reliable.clock import utcnow
from celery_reliable.sanitize import storable
from celery_reliable.store.limits import literal_size

from .types import DeadLetter, DeadLetterReason, FailedMessage, Redactor, reason_of

logger = logging.getLogger(__name__)

#: The text columns of an entry (JSON columns are ASCII, escaped by the JSON encoder).
TEXT_COLUMNS = (
    "message_id",
    "task_id",
    "task_name",
    "handler_key",
    "content_type",
    "content_encoding",
    "detector",
    "exception_type",
    "exception_message",
    "traceback",
    "failure_group",
    "hostname",
)
#: The big values of an entry, in the order they are given up when it is too large.
_CUTTABLE = ("traceback", "exception_message", "headers")


def exception_name(exc: BaseException) -> str:
    cls = type(exc)
    return (
        cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    )


def failure_group(exc: BaseException) -> str:
    """Exception type + the innermost frame in application code: one root cause, one group.

    Library frames (site-packages, the standard library, celery_reliable) are skipped, so
    a failure deep inside a driver groups by the application line that called it. The
    function is named, not the line, so the group survives unrelated edits to the file.
    """
    frames = traceback_module.extract_tb(exc.__traceback__) if exc.__traceback__ else []
    where = None
    for frame in reversed(frames):
        path = frame.filename.replace("\\", "/")
        if any(part in path for part in ("/site-packages/", "/lib/python", "/celery_reliable/")):
            continue
        where = f"{path.rsplit('/', 1)[-1]}:{frame.name}"
        break
    return f"{exception_name(exc)} @ {where or 'library code'}"[:255]


def fit_entry(row: dict[str, Any], budget: int) -> None:
    """Make an entry's values fit in ``budget`` bytes, saying in it what was left out.

    Only messages of megabytes get here, on MySQL/MariaDB (see ``store/limits.py``). An
    entry over the limit could never be written: the intake would take the refusal for an
    unreachable store and requeue the message for ever. So, in turn, until it fits: the raw
    body goes when the arguments were decoded (they are what a replay needs, and the body
    is their copy); otherwise the arguments go and the raw body is cut (the entry can be
    inspected, not replayed); then the traceback, the exception message and the headers are
    cut. Each step is noted in the exception message; raise ``max_allowed_packet`` to keep
    whole messages.
    """
    sizes = {name: literal_size(value) for name, value in row.items()}  # values are MBs

    def put(name: str, value: Any) -> None:
        row[name], sizes[name] = value, literal_size(value)

    def over() -> int:
        return sum(sizes.values()) - budget

    if over() <= 0:
        return
    notes = []
    raw, args_size = row["raw_body"], sizes["args"] + sizes["kwargs"]
    if raw is not None and row["args"] is not None:
        put("raw_body", None)
        if over() <= 0:
            notes.append(f"raw body of {len(raw)} bytes not kept (the arguments are)")
        else:
            put("raw_body", raw)
    if over() > 0 and row["args"] is not None:
        put("args", None)
        put("kwargs", None)
        notes.append(f"arguments of {args_size} bytes not kept")
    if over() > 0 and row["raw_body"] is not None:
        body = row["raw_body"]
        put("raw_body", body[: max(0, len(body) - over())])
        while over() > 0 and row["raw_body"]:  # escapes: the cut bytes may have counted less
            put("raw_body", row["raw_body"][: -over()])
        notes.append(f"raw body cut to {len(row['raw_body'])} of {len(body)} bytes")
    for name in _CUTTABLE:
        if over() > 0 and row[name]:
            size = len(row[name])
            put(name, "{}" if name == "headers" else row[name][: max(0, size - over())])
            notes.append(f"{name} cut from {size} characters")
    note = (
        f"[entry cut to the {budget} bytes one statement of the store takes "
        f"(raise max_allowed_packet to keep it whole): "
        f"{'; '.join(notes)}]"
    )
    row["exception_message"] = f"{row['exception_message'] or ''} {note}".strip()
    logger.warning("dead-letter entry of message %s: %s", row["message_id"], note)


def fit_row(row: dict[str, Any], lengths: Mapping[str, int | None], budget: int | None) -> None:
    """Make ``row`` storable: text values each store accepts, the whole within ``budget``."""
    for name in TEXT_COLUMNS:
        row[name] = storable(row[name], lengths.get(name))
    if budget is not None:
        fit_entry(row, budget)


def to_json(value: Any) -> str | None:
    """JSON as kombu writes it (datetimes, decimals, UUIDs); None for None or what it cannot."""
    try:
        return None if value is None else str(kombu_json.dumps(value))  # type: ignore[no-untyped-call]
    except (TypeError, ValueError):
        return None


#: kombu_json.loads for text, without building a decoder for every value.
_decode = json.JSONDecoder(object_hook=kombu_json.object_hook).decode


def from_json(value: str | None) -> Any:
    return None if value is None else _decode(value)


def entry_row(
    message: FailedMessage,
    reason: DeadLetterReason | str,
    *,
    exc: BaseException | None,
    detail: str | None,
    detector: str | None,
    redactor: Redactor | None,
) -> dict[str, Any]:
    """The row that records ``message`` (redacted, arguments as JSON), not yet fitted."""
    reason = reason_of(reason)
    fields: dict[str, Any] = {
        "args": message.args,
        "kwargs": message.kwargs,
        "headers": dict(message.headers),
        "exception_message": detail if exc is None else (str(exc) or detail),
        "traceback": (
            "".join(traceback_module.format_exception(type(exc), exc, exc.__traceback__))
            if exc is not None
            else None
        ),
    }
    if redactor is not None:
        fields = redactor(dict(fields))
    args_json, kwargs_json = to_json(fields["args"]), to_json(fields["kwargs"])
    raw_body = message.raw_body
    if message.args is not None and (args_json is None or kwargs_json is None):
        note = "(arguments are not JSON: kept as repr)"
        fields["exception_message"] = f"{fields['exception_message'] or ''} {note}".strip()
        raw_body = raw_body or repr((message.args, message.kwargs)).encode()
    return {
        "message_id": message.message_id,
        "task_id": message.task_id,
        "task_name": message.task_name,
        "handler_key": message.handler_key,
        "args": args_json,
        "kwargs": kwargs_json,
        "headers": to_json(fields["headers"]) or "{}",
        "delivery_info": to_json(dict(message.delivery_info)) or "{}",
        "raw_body": raw_body,
        "content_type": message.content_type,
        "content_encoding": message.content_encoding,
        "reason": reason.value,
        "detector": detector,
        "exception_type": exception_name(exc) if exc is not None else reason.value,
        "exception_message": fields["exception_message"],
        "traceback": fields["traceback"],
        "failure_group": failure_group(exc) if exc is not None else reason.value,
        "attempts": message.attempts,
        "first_seen_at": message.first_seen_at,
        "dead_lettered_at": utcnow(),
        "hostname": message.hostname,
        "replay_count": 0,
    }


def entry_of(row: Any) -> DeadLetter:
    """The entry a whole stored row holds, its JSON values decoded."""
    return DeadLetter(
        id=row.id,
        message_id=row.message_id,
        task_id=row.task_id,
        task_name=row.task_name,
        handler_key=row.handler_key,
        args=from_json(row.args),
        kwargs=from_json(row.kwargs),
        headers=from_json(row.headers) or {},
        delivery_info=from_json(row.delivery_info) or {},
        reason=DeadLetterReason(row.reason),
        detector=row.detector,
        exception_type=row.exception_type,
        exception_message=row.exception_message,
        traceback=row.traceback,
        failure_group=row.failure_group,
        attempts=row.attempts,
        first_seen_at=row.first_seen_at,
        dead_lettered_at=row.dead_lettered_at,
        hostname=row.hostname,
        replay_count=row.replay_count,
        replayed_at=row.replayed_at,
        raw_body=row.raw_body,
        content_type=row.content_type,
        content_encoding=row.content_encoding,
    )
