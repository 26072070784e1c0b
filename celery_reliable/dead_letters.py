"""The dead-letter store: messages that failed for good, kept whole for review and replay.

An entry keeps everything needed to understand the failure and to send the message again:
task, arguments, headers, delivery info, the exception with its traceback, how many runs it
had and when it was first seen. It lives in the reliable store, so it commits in the same
transaction as the inbox's quarantine mark: a message is dead-lettered and quarantined, or
neither. Replaying goes through the transactional outbox, so marking an entry replayed and
publishing it again are one transaction too.
"""

from __future__ import annotations

import enum
import json
import logging
import threading
import time
import traceback as traceback_module
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from functools import cached_property, partial
from typing import TYPE_CHECKING, Any

from celery import Signature
from celery.utils import uuid
from kombu.utils import json as kombu_json
from sqlalchemy import (
    ColumnElement,
    Connection,
    Update,
    bindparam,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from . import wire
from .clock import utcnow
from .durations import ago, parse_duration
from .exceptions import DeadLetterNotFound, InvalidArgument, ReliableError
from .message import MESSAGE_ID_HEADER, validate_message_id
from .outbox import MessagePlan
from .signals import dead_letter_alert
from .store.bulk import insert_rows, is_any_of
from .store.limits import literal_size, value_budget

if TYPE_CHECKING:
    from .extension import Reliable

logger = logging.getLogger(__name__)

#: Headers Celery sets on every message by itself: a replay gets fresh ones.
_PROTOCOL_HEADERS = frozenset(
    {
        "id",
        "task",
        "root_id",
        "parent_id",
        "group",
        "group_index",
        "retries",
        "eta",
        "expires",
        "timelimit",
        "argsrepr",
        "kwargsrepr",
        "origin",
        "lang",
        "shadow",
        "ignore_result",
        "replaced_task_nesting",
        "stamped_headers",
        "stamps",
    }
)
#: The text columns of an entry (JSON columns are ASCII, escaped by the JSON encoder).
_TEXT_COLUMNS = (
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
#: celery_reliable's own bookkeeping headers, from the task pipeline.
INTERNAL_HEADER_PREFIX = "reliable_"
#: Entries replayed per transaction by ``replay_batch``.
REPLAY_CHUNK = 500


class DeadLetterReason(str, enum.Enum):
    """Why a message was dead-lettered; member names are the upper-snake form of the values."""

    MAX_RETRIES_EXCEEDED = "MaxRetriesExceeded"
    CIRCUIT_BREAKER_OPEN = "CircuitBreakerOpen"
    DESERIALIZATION_FAILED = "DeserializationFailed"
    HANDLER_NOT_FOUND = "HandlerNotFound"
    VALIDATION_FAILED = "ValidationFailed"
    AUTHORIZATION_FAILED = "AuthorizationFailed"
    MESSAGE_EXPIRED = "MessageExpired"
    MANUAL_REJECTION = "ManualRejection"
    POISON_MESSAGE = "PoisonMessage"
    UNHANDLED_EXCEPTION = "UnhandledException"

    def __str__(self) -> str:
        return self.value


def reason_of(value: object) -> DeadLetterReason:
    """A reason from a member or its value (``"MaxRetriesExceeded"``); a clear error otherwise."""
    try:
        return DeadLetterReason(value)
    except ValueError:
        known = ", ".join(r.value for r in DeadLetterReason)
        raise InvalidArgument(f"unknown dead-letter reason {value!r}; known: {known}") from None


@dataclass(frozen=True)
class FailedMessage:
    """What is known of a message when it is dead-lettered (from a task run or a raw delivery)."""

    message_id: str
    task_id: str | None
    task_name: str | None
    handler_key: str | None = None
    args: Any = None  # a list, or None when the body could not be decoded
    kwargs: Any = None
    headers: Mapping[str, Any] = field(default_factory=dict)
    delivery_info: Mapping[str, Any] = field(default_factory=dict)
    raw_body: bytes | None = None
    content_type: str | None = None
    content_encoding: str | None = None
    attempts: int = 0
    first_seen_at: datetime | None = None
    hostname: str | None = None


@dataclass(frozen=True)
class DeadLetter:
    """One dead-letter entry, as :meth:`DeadLetters.get` and :meth:`DeadLetters.list` return it."""

    id: int
    message_id: str
    task_id: str | None
    task_name: str | None
    handler_key: str | None
    args: Any
    kwargs: Any
    headers: dict[str, Any]
    delivery_info: dict[str, Any]
    reason: DeadLetterReason
    detector: str | None
    exception_type: str | None
    exception_message: str | None
    traceback: str | None
    failure_group: str | None
    attempts: int
    first_seen_at: datetime | None
    dead_lettered_at: datetime
    hostname: str | None
    replay_count: int
    replayed_at: datetime | None
    raw_body: bytes | None = None
    content_type: str | None = None
    content_encoding: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready fields (the raw body, if any, is left out)."""
        data = asdict(self)
        data.pop("raw_body")
        data["reason"] = self.reason.value
        for name in ("first_seen_at", "dead_lettered_at", "replayed_at"):
            data[name] = data[name].isoformat() if data[name] else None
        return data


@dataclass(frozen=True)
class DeadLetterStatistics:
    """``reliable.dead_letters.statistics()``."""

    count: int
    by_reason: dict[str, int]
    by_task: dict[str, int]
    by_failure_group: dict[str, int]
    oldest_age: timedelta | None

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["oldest_age"] = None if self.oldest_age is None else self.oldest_age.total_seconds()
        return data


#: The redaction hook: gets the fields about to be stored, returns them masked.
Redactor = Callable[[dict[str, Any]], dict[str, Any]]
Transform = Callable[[Signature], Signature]


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


def require_count(value: object, name: str) -> int:
    """A whole number >= 0 (a limit, an offset) or InvalidArgument naming the argument."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidArgument(f"{name} must be a whole number >= 0, got {value!r}")
    return value


def storable(value: str | None, length: int | None = None) -> str | None:
    """``value`` as every store accepts it: NUL and lone surrogates escaped, cut to ``length``.

    Whatever a sender put in a header (a task name, a content type, an id) ends up in a text
    column, and so do exception messages that quote it. PostgreSQL refuses a NUL character
    in text, no driver can encode a lone surrogate (py-amqp decodes invalid UTF-8 in headers
    into them), and the escapes make a value longer than its column may be. Each failure
    would keep the message out of the store for good: the intake would take it for an
    unreachable store and requeue it for ever.
    """
    if not isinstance(value, str):
        return value
    if "\x00" in value or not value.isascii():
        value = value.encode("utf-8", "backslashreplace").decode("utf-8")
        value = value.replace("\x00", "\\x00")
    return value if length is None else value[:length]


#: The big values of an entry, in the order they are given up when it is too large.
_CUTTABLE = ("traceback", "exception_message", "headers")


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


def _json(value: Any) -> str | None:
    try:
        return None if value is None else str(kombu_json.dumps(value))  # type: ignore[no-untyped-call]
    except (TypeError, ValueError):
        return None


#: kombu_json.loads for text, without building a decoder for every value.
_decode = json.JSONDecoder(object_hook=kombu_json.object_hook).decode


def _loads(value: str | None) -> Any:
    return None if value is None else _decode(value)


class DeadLetters:
    """``reliable.dead_letters``: record, query, replay and purge dead-lettered messages.

    ``redactor`` (a callable or None) masks stored fields: it receives a dict with ``args``,
    ``kwargs``, ``headers``, ``exception_message`` and ``traceback`` and returns it changed.
    Replay sends what is stored, so mask only what the task does not need, or replay with
    a ``transform`` that puts the real values back.
    """

    def __init__(self, reliable: Reliable) -> None:
        self._reliable = reliable
        self.table = reliable.tables.dead_letter
        self.redactor: Redactor | None = None
        self._alert_lock = threading.Lock()
        self._last_alert = 0.0

    @cached_property
    def _mark_replayed(self) -> Update:
        t = self.table
        return (
            update(t)
            .where(is_any_of(t.c.id, "ids", self._reliable.database.dialect))
            .values(
                replay_count=t.c.replay_count + 1,
                replayed_at=bindparam("now", type_=t.c.replayed_at.type),
            )
        )

    # -- recording ------------------------------------------------------------------------

    def add(
        self,
        message: FailedMessage,
        reason: DeadLetterReason,
        *,
        exc: BaseException | None = None,
        detail: str | None = None,
        detector: str | None = None,
        connection: Connection | None = None,
    ) -> int:
        """Store an entry (in ``connection``'s transaction when given); return its id."""
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
        if self.redactor is not None:
            fields = self.redactor(dict(fields))
        args_json, kwargs_json = _json(fields["args"]), _json(fields["kwargs"])
        raw_body = message.raw_body
        if message.args is not None and (args_json is None or kwargs_json is None):
            detail = f"{detail or ''} (arguments are not JSON: kept as repr)".strip()
            raw_body = raw_body or repr((message.args, message.kwargs)).encode()
        row = {
            "message_id": message.message_id,
            "task_id": message.task_id,
            "task_name": message.task_name,
            "handler_key": message.handler_key,
            "args": args_json,
            "kwargs": kwargs_json,
            "headers": _json(fields["headers"]) or "{}",
            "delivery_info": _json(dict(message.delivery_info)) or "{}",
            "raw_body": raw_body,
            "content_type": message.content_type,
            "content_encoding": message.content_encoding,
            "reason": reason_of(reason).value,
            "detector": detector,
            "exception_type": exception_name(exc) if exc is not None else reason_of(reason).value,
            "exception_message": fields["exception_message"],
            "traceback": fields["traceback"],
            "failure_group": failure_group(exc) if exc is not None else reason_of(reason).value,
            "attempts": message.attempts,
            "first_seen_at": message.first_seen_at,
            "dead_lettered_at": utcnow(),
            "hostname": message.hostname,
            "replay_count": 0,
        }
        for name in _TEXT_COLUMNS:
            row[name] = storable(row[name], getattr(self.table.c[name].type, "length", None))
        budget = value_budget(self._reliable.database)
        if budget is not None:
            fit_entry(row, budget)
        statement = insert(self.table).values(row)
        if connection is not None:
            entry_id = connection.execute(statement).inserted_primary_key[0]  # type: ignore[index]
        else:
            with self._reliable.database.engine.begin() as conn:
                entry_id = conn.execute(statement).inserted_primary_key[0]  # type: ignore[index]
        self._reliable.metrics.dead_letters.add(
            1, {"reason": row["reason"], "task": message.task_name or ""}
        )
        logger.error(
            "message %s (%s) dead-lettered as %s: entry %s: %s",
            message.message_id,
            message.task_name,
            row["reason"],
            entry_id,
            row["exception_message"],
        )
        return int(entry_id)

    def check_alert(self) -> bool:
        """Alert (ERROR log + signal) when dead letters in the window exceed the threshold.

        Called after each dead letter commits; one alert per window per process, so a
        storm is reported, not repeated for every message of it.
        """
        settings = self._reliable.settings
        window = settings.alert_window
        with self._alert_lock:
            if time.monotonic() - self._last_alert < window.total_seconds():
                return False
            recent = self.count(since=utcnow() - window)
            if recent <= settings.alert_threshold:
                return False
            self._last_alert = time.monotonic()
        logger.error(
            "%d messages were dead-lettered in the last %s (reliable_alert_threshold is %d)",
            recent,
            window,
            settings.alert_threshold,
        )
        dead_letter_alert.send(
            sender=self._reliable.app,
            count=recent,
            window=window,
            threshold=settings.alert_threshold,
        )
        return True

    # -- queries ----------------------------------------------------------------------------

    def _where(
        self,
        reason: DeadLetterReason | str | None,
        task_name: str | None,
        since: datetime | None,
        until: datetime | None,
        replayed: bool | None,
    ) -> list[ColumnElement[bool]]:
        t = self.table
        clauses: list[ColumnElement[bool]] = []
        if reason is not None:
            clauses.append(t.c.reason == reason_of(reason).value)
        if task_name is not None:
            clauses.append(t.c.task_name == task_name)
        for bound, name in ((since, "since"), (until, "until")):
            if bound is not None and (not isinstance(bound, datetime) or bound.tzinfo is None):
                raise InvalidArgument(f"{name} must be a timezone-aware datetime, got {bound!r}")
        if since is not None:
            clauses.append(t.c.dead_lettered_at >= since)
        if until is not None:
            clauses.append(t.c.dead_lettered_at < until)
        if replayed is True:
            clauses.append(t.c.replay_count > 0)
        elif replayed is False:
            clauses.append(t.c.replay_count == 0)
        return clauses

    def list(
        self,
        reason: DeadLetterReason | str | None = None,
        task_name: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        replayed: bool | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> list[DeadLetter]:
        """Entries matching every filter given, newest first; page with ``limit``/``offset``."""
        require_count(limit, "limit")
        require_count(offset, "offset")
        query = (
            select(self.table)
            .where(*self._where(reason, task_name, since, until, replayed))
            .order_by(self.table.c.id.desc())
            .limit(limit)
            .offset(offset)
        )
        with self._reliable.database.engine.connect() as conn:
            return [_entry(row) for row in conn.execute(query)]

    def get(self, entry_id: int) -> DeadLetter | None:
        """The entry with this id, or None."""
        with self._reliable.database.engine.connect() as conn:
            row = conn.execute(select(self.table).where(self.table.c.id == entry_id)).first()
        return None if row is None else _entry(row)

    def count(
        self,
        reason: DeadLetterReason | str | None = None,
        task_name: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        replayed: bool | None = None,
    ) -> int:
        query = select(func.count()).select_from(self.table)
        query = query.where(*self._where(reason, task_name, since, until, replayed))
        with self._reliable.database.engine.connect() as conn:
            return int(conn.scalar(query) or 0)

    def statistics(self) -> DeadLetterStatistics:
        """Count, counts by reason, task and failure group, and the oldest entry's age."""
        t = self.table

        def grouped(column: Any) -> dict[str, int]:
            rows = conn.execute(select(column, func.count()).group_by(column))
            return {str(key): int(n) for key, n in rows}

        with self._reliable.database.engine.connect() as conn:
            count = int(conn.scalar(select(func.count()).select_from(t)) or 0)
            oldest = conn.scalar(select(func.min(t.c.dead_lettered_at)))
            return DeadLetterStatistics(
                count=count,
                by_reason=grouped(t.c.reason),
                by_task=grouped(t.c.task_name),
                by_failure_group=grouped(t.c.failure_group),
                oldest_age=None if oldest is None else utcnow() - oldest,
            )

    # -- replay -----------------------------------------------------------------------------

    def replay(self, entry_id: int, *, transform: Transform | None = None) -> str:
        """Publish the entry again through the outbox; return the new Celery task id.

        In one transaction: the entry is marked replayed, the inbox's quarantine of its
        message is lifted (so the replay runs, once), and the message is written to the
        outbox under the same message id. ``transform`` gets the signature about to be
        published and returns the one to publish (a fixed argument, a header).
        """
        reliable = self._reliable
        t = self.table
        with Session(reliable.database.engine) as session, session.begin():
            query = select(t).where(t.c.id == entry_id)
            if reliable.database.dialect != "sqlite":
                query = query.with_for_update()
            row = session.execute(query).first()
            if row is None:
                raise DeadLetterNotFound(f"no dead-letter entry {entry_id!r}")
            entry = _entry(row)
            outbox_row, task_id = self._prepare(entry, transform)
            session.execute(insert(reliable.tables.outbox).values(outbox_row))
            if entry.handler_key is not None:
                reliable.store.lift_quarantine(
                    [entry.message_id], entry.handler_key, connection=session.connection()
                )
            session.execute(
                update(t)
                .where(t.c.id == entry_id)
                .values(replay_count=t.c.replay_count + 1, replayed_at=utcnow())
            )
        logger.info("dead-letter entry %s replayed as message %s", entry_id, entry.message_id)
        return task_id

    def _prepare(
        self, entry: DeadLetter, transform: Transform | None
    ) -> tuple[dict[str, Any], str]:
        """The outbox row that publishes ``entry`` again, and its new Celery task id."""
        signature = self._signature(entry)
        if transform is not None:
            signature = transform(signature)
            if not isinstance(signature, Signature):
                raise InvalidArgument(f"transform must return a signature, returned {signature!r}")
        task_id = str(signature.options.get("task_id") or uuid())
        signature.set(task_id=task_id)
        row = self._reliable.outbox.build_row(signature, entry.message_id, None, None, None, {})
        return row, task_id

    def _prepare_entry(
        self, transform: Transform | None, row: Any, now: datetime
    ) -> dict[str, Any]:
        """The outbox row for a whole entry read from the store (``replay_batch``); the
        row gets its own time, as ``replay`` gives it."""
        return self._prepare(_entry(row), transform)[0]

    def _signature(self, entry: DeadLetter) -> Signature:
        _require_replayable(entry.id, entry.task_name, entry.args, entry.reason.value)
        options = _replay_options(entry.delivery_info, self._reliable.app.amqp.queues)
        return self._reliable.app.signature(
            entry.task_name,
            args=tuple(entry.args),
            kwargs=dict(entry.kwargs or {}),
            headers=_replay_headers(entry.message_id, entry.headers),
            **options,
        )

    def replay_batch(
        self,
        reason: DeadLetterReason | str | None = None,
        task_name: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        *,
        limit: int | None = None,
        dry_run: bool = False,
        transform: Transform | None = None,
        rate_limit: float | None = None,
        stop_after_failures: int | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> int:
        """Replay the entries not replayed yet that match; return how many were (or would be).

        Oldest first, up to :data:`REPLAY_CHUNK` entries per transaction: each entry is
        replayed as :meth:`replay` does it, but a chunk's outbox rows, quarantine lifts and
        replay marks are written with one statement each, so a large backlog replays at
        thousands per second rather than one commit per entry. An entry that cannot be
        replayed (an unknown task, a failing ``transform``) is counted as a failure and
        left as it was; if a chunk's transaction fails, its entries are retried one by one
        so that only the bad ones fail. Entries dead-lettered after the batch started wait
        for the next batch.

        ``rate_limit`` is replays per second (chunks shrink so that pacing stays smooth);
        ``stop_after_failures`` ends the batch after that many entries failed to replay.
        ``progress`` is called with the number of entries done after each chunk (a
        progress bar's ``update``).
        """
        if limit is not None:
            require_count(limit, "limit")
        if rate_limit is not None and (not isinstance(rate_limit, (int, float)) or rate_limit <= 0):
            raise InvalidArgument(f"rate_limit must be a positive number, got {rate_limit!r}")
        t = self.table
        where = self._where(reason, task_name, since, until, False)
        if dry_run:
            due = select(t.c.id).where(*where)
            if limit is not None:
                due = due.limit(limit)
            with self._reliable.database.engine.connect() as conn:
                return int(conn.scalar(select(func.count()).select_from(due.subquery())) or 0)
        with self._reliable.database.engine.connect() as conn:
            last_id = conn.scalar(select(func.max(t.c.id)).where(*where))
        if last_id is None:
            return 0
        # Under a rate limit, at most a hundredth of a second's worth per chunk: smooth pacing.
        chunk = (
            REPLAY_CHUNK if rate_limit is None else max(1, min(REPLAY_CHUNK, int(rate_limit / 100)))
        )
        replayed = failures = 0
        after = 0  # ids are positive: keyset pagination, oldest first
        prepare: Callable[[Any, datetime], dict[str, Any]]
        if transform is None:  # only what a replay needs is read (not the traceback)
            columns: Sequence[Any] = _replay_columns(t)
            prepare = _BatchReplay(self._reliable).row
        else:
            columns = (t,)
            prepare = partial(self._prepare_entry, transform)
        next_at = time.monotonic()
        while limit is None or replayed + failures < limit:
            size = chunk if limit is None else min(chunk, limit - replayed - failures)
            time.sleep(max(0.0, next_at - time.monotonic()))
            done, failed, after = self._replay_chunk(
                where, after, last_id, size, columns, prepare, transform
            )
            if rate_limit:  # the pause counts from the chunk's end: never faster than the limit
                next_at = time.monotonic() + size / rate_limit
            replayed += done
            failures += failed
            if progress is not None and done + failed:
                progress(done + failed)
            if stop_after_failures is not None and failures >= stop_after_failures:
                logger.error("replay batch stopped after %d failures", failures)
                break
            if done + failed < size:
                break
        return replayed

    def _replay_chunk(
        self,
        where: Sequence[ColumnElement[bool]],
        after: int,
        last_id: int,
        size: int,
        columns: Sequence[Any],
        prepare: Callable[[Any, datetime], dict[str, Any]],
        transform: Transform | None,
    ) -> tuple[int, int, int]:
        """Replay up to ``size`` entries with ids in (after, last_id]: (done, failed, last id).

        Rows are locked (``SKIP LOCKED``: an entry another batch or a single replay holds is
        being replayed already) and their replay count is checked again under the lock.
        """
        reliable, t = self._reliable, self.table
        query = (
            select(*columns)
            .where(*where, t.c.id > after, t.c.id <= last_id)
            .order_by(t.c.id)
            .limit(size)
        )
        if reliable.database.dialect != "sqlite":
            query = query.with_for_update(skip_locked=True)
        failed = 0
        rows: Sequence[Any] = ()
        try:
            with reliable.database.engine.begin() as conn:
                rows = conn.execute(query).all()
                if not rows:
                    return 0, 0, last_id
                outbox_rows: list[dict[str, Any]] = []
                by_handler: dict[str, list[str]] = defaultdict(list)
                entry_ids: list[int] = []
                now = utcnow()
                for row in rows:
                    try:
                        outbox_rows.append(prepare(row, now))
                    except Exception:
                        failed += 1
                        logger.warning(
                            "replay of dead-letter entry %s failed", row.id, exc_info=True
                        )
                        continue
                    entry_ids.append(row.id)
                    if row.handler_key is not None:
                        by_handler[row.handler_key].append(row.message_id)
                if outbox_rows:
                    insert_rows(conn, reliable.tables.outbox, outbox_rows)
                    for handler_key, message_ids in by_handler.items():
                        reliable.store.lift_quarantine(message_ids, handler_key, connection=conn)
                    conn.execute(self._mark_replayed, {"ids": entry_ids, "now": now})
        except DBAPIError:
            if not rows:
                raise  # the entries could not even be read: the store is the problem
            logger.warning(
                "replaying %d entries at once failed: one by one", len(rows), exc_info=True
            )
            done, failed = self._replay_each([row.id for row in rows], transform)
            return done, failed, rows[-1].id
        logger.info(
            "%d dead-letter entries replayed (ids %s to %s)",
            len(entry_ids),
            rows[0].id,
            rows[-1].id,
        )
        return len(entry_ids), failed, rows[-1].id

    def _replay_each(
        self, entry_ids: Sequence[int], transform: Transform | None
    ) -> tuple[int, int]:
        """:meth:`replay` entry by entry, so that one bad entry fails alone: (done, failed)."""
        done = failed = 0
        for entry_id in entry_ids:
            try:
                self.replay(entry_id, transform=transform)
            except Exception:
                failed += 1
                logger.warning("replay of dead-letter entry %s failed", entry_id, exc_info=True)
            else:
                done += 1
        return done, failed

    # -- removal ------------------------------------------------------------------------

    def purge_older_than(self, age: timedelta | str | float) -> int:
        """Delete entries dead-lettered over ``age`` ago ('30d', a timedelta); return how many."""
        try:
            cutoff = ago(parse_duration(age), utcnow())
        except ValueError as exc:
            raise InvalidArgument(f"purge_older_than: {exc}") from exc
        where = self.table.c.dead_lettered_at < cutoff
        return self._reliable.maintenance.delete_in_batches(self.table, where)

    def delete(self, entry_id: int) -> bool:
        """Delete one entry; False if there was none."""
        with self._reliable.database.engine.begin() as conn:
            return conn.execute(delete(self.table).where(self.table.c.id == entry_id)).rowcount == 1


def _entry(row: Any) -> DeadLetter:
    return DeadLetter(
        id=row.id,
        message_id=row.message_id,
        task_id=row.task_id,
        task_name=row.task_name,
        handler_key=row.handler_key,
        args=_loads(row.args),
        kwargs=_loads(row.kwargs),
        headers=_loads(row.headers) or {},
        delivery_info=_loads(row.delivery_info) or {},
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


#: What ``replay_batch`` reads of an entry when there is no transform.
def _replay_columns(t: Any) -> tuple[Any, ...]:
    return (
        t.c.id,
        t.c.message_id,
        t.c.task_name,
        t.c.handler_key,
        t.c.args,
        t.c.kwargs,
        t.c.headers,
        t.c.delivery_info,
        t.c.reason,
    )


def _require_replayable(entry_id: int, task_name: str | None, args: Any, reason: str) -> None:
    if task_name is None or args is None:
        raise ReliableError(
            f"dead-letter entry {entry_id} has no decodable task and arguments "
            f"({reason}); it can be inspected but not replayed"
        )


def _replay_headers(message_id: str, headers: Mapping[str, Any]) -> dict[str, Any]:
    """The stored headers a replay sends again: not Celery's own, not the failed run's."""
    kept = {
        key: value
        for key, value in headers.items()
        if key not in _PROTOCOL_HEADERS and not key.startswith(INTERNAL_HEADER_PREFIX)
    }
    kept[MESSAGE_ID_HEADER] = message_id
    return kept


def _replay_options(delivery_info: Mapping[str, Any], queues: Mapping[str, Any]) -> dict[str, Any]:
    """The queue (if still declared) and priority the entry was delivered with."""
    options: dict[str, Any] = {}
    routing_key = delivery_info.get("routing_key")
    if routing_key and routing_key in queues:
        options["queue"] = routing_key
    if delivery_info.get("priority") is not None:
        options["priority"] = delivery_info["priority"]
    return options


class _BatchReplay:
    """The outbox rows of one ``replay_batch`` without a transform, built without signatures.

    Each row is what ``DeadLetters._prepare`` builds for the entry: the same headers and
    options, and the message by the outbox's MessagePlan for the task and options, shared
    by the batch's entries (an unknown task's error too). Delivery infos repeat, so their
    options are cached.
    """

    def __init__(self, reliable: Reliable) -> None:
        self._outbox = reliable.outbox
        self._queues = reliable.app.amqp.queues
        self._plans: dict[tuple[str, str], MessagePlan | Exception] = {}
        self._options: dict[str, tuple[dict[str, Any], str]] = {}
        self._task_ids = wire.delivery_tags()  # random UUIDs, as celery.utils.uuid makes

    def row(self, row: Any, now: datetime) -> dict[str, Any]:
        """The outbox row for an entry read as ``_replay_columns``, created at ``now`` (the
        chunk's time: its rows differ in their messages only)."""
        entry_id, message_id, task_name, _, args, kwargs, headers, delivery_info, reason = row
        args = _loads(args)
        _require_replayable(entry_id, task_name, args, reason)
        cached = self._options.get(delivery_info)
        if cached is None:
            options = _replay_options(_loads(delivery_info) or {}, self._queues)
            cached = options, repr(options)  # a key even for an odd (unhashable) priority
            if len(self._options) < 1000:
                self._options[delivery_info] = cached
        options, options_key = cached
        key = (task_name, options_key)
        plan = self._plans.get(key)
        if plan is None:
            try:
                plan = MessagePlan(self._outbox, task_name, dict(options))
            except Exception as exc:  # fails each entry of the task alike
                plan = exc
            self._plans[key] = plan
        if isinstance(plan, Exception):  # raised afresh: no traceback grows entry by entry
            raise plan.with_traceback(None)
        headers = _replay_headers(validate_message_id(message_id), _loads(headers) or {})
        kwargs = dict(_loads(kwargs) or {})
        return plan.row(next(self._task_ids), tuple(args), kwargs, headers, now=now)
