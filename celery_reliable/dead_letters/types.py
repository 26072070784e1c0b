"""The values of the dead-letter store: reasons, a failed message, an entry, statistics, a filter.

Other modules (the task pipeline, the intake, poison detection) need only these, not the
store behind them.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from celery import Signature

from celery_reliable.clock import utcnow
from celery_reliable.durations import ago, parse_duration
from celery_reliable.exceptions import InvalidArgument


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


def require_count(value: object, name: str) -> int:
    """A whole number >= 0 (a limit, an offset) or InvalidArgument naming the argument."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidArgument(f"{name} must be a whole number >= 0, got {value!r}")
    return value


@dataclass(frozen=True)
class DeadLetterFilter:
    """Which entries a query, a batch replay or a purge covers; a field left None matches all.

    Checked when it is built, so the API, the CLI and Flower refuse the same mistakes with
    the same message, and a dry run counts exactly what the action then covers.
    ``since`` is inclusive, ``until`` exclusive (both on ``dead_lettered_at``).
    """

    reason: DeadLetterReason | str | None = None  # a value is taken, kept as its member
    task_name: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    replayed: bool | None = None

    def __post_init__(self) -> None:
        if self.reason is not None:
            object.__setattr__(self, "reason", reason_of(self.reason))
        for name in ("since", "until"):
            bound = getattr(self, name)
            if bound is not None and (not isinstance(bound, datetime) or bound.tzinfo is None):
                raise InvalidArgument(f"{name} must be a timezone-aware datetime, got {bound!r}")

    @classmethod
    def older_than(cls, age: timedelta | str | float) -> DeadLetterFilter:
        """Entries dead-lettered over ``age`` ago ('30d', a timedelta): what a purge deletes."""
        try:
            cutoff = ago(parse_duration(age), utcnow())
        except ValueError as exc:
            raise InvalidArgument(f"older than: {exc}") from exc
        return cls(until=cutoff)


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
    """``reliable.dead_letters.statistics()``.

    ``count`` is entries, ``messages`` the distinct messages they belong to: a replay that
    fails again adds an entry to its message, so six messages replayed twice while still
    broken are eight entries, and the operator asks how many messages are dead.
    """

    count: int
    messages: int
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
#: A replay's ``transform``: gets the signature about to be published, returns the one to publish.
Transform = Callable[[Signature], Signature]
