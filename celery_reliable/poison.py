"""Poison detectors: decide that a message can never succeed, and say why.

A detector looks at a :class:`FailureContext` and returns a :class:`Verdict` (dead-letter
it, with this reason) or None (no opinion). Detectors run after a run failed, and before a
run that is not the message's first (so a message older than ``max_age`` is not run again).
The first verdict wins; its reason and the detector's name are stored with the dead letter.

Built in: :class:`RetryCountDetector`, :class:`ExceptionTypeDetector`,
:class:`TimespanDetector` and :class:`CompositeDetector`. Users add their own with
``reliable.add_poison_detector(callable_or_object)``: anything callable with the context
that returns a Verdict or None.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol, runtime_checkable

from .dead_letters.types import DeadLetterReason, reason_of
from .exceptions import ConfigurationError


@dataclass(frozen=True)
class Verdict:
    """A detector's finding: the message is poison, for ``reason``."""

    reason: DeadLetterReason
    detector: str
    detail: str


@dataclass(frozen=True)
class FailureContext:
    """What a detector may look at.

    ``exception`` is None when detectors run before a run; ``attempts`` counts runs
    including the current one; ``first_seen_at`` is when the inbox first saw the message.
    """

    task_name: str
    handler_key: str
    message_id: str
    attempts: int
    exception: BaseException | None
    first_seen_at: datetime | None
    run_started_at: datetime
    now: datetime
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] | None = None


@runtime_checkable
class PoisonDetector(Protocol):
    """Anything with a ``name`` that maps a context to a verdict or None."""

    name: str

    def __call__(self, context: FailureContext) -> Verdict | None: ...


class RetryCountDetector:
    """Poison once a message has had ``max_attempts`` runs and failed again."""

    name = "retry-count"

    def __init__(self, max_attempts: int) -> None:
        if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1:
            raise ConfigurationError(f"max_attempts must be a whole number >= 1: {max_attempts!r}")
        self.max_attempts = max_attempts

    def __call__(self, context: FailureContext) -> Verdict | None:
        if context.exception is not None and context.attempts >= self.max_attempts:
            return Verdict(
                DeadLetterReason.MAX_RETRIES_EXCEEDED,
                self.name,
                f"failed on run {context.attempts} of {self.max_attempts}",
            )
        return None


class ExceptionTypeDetector:
    """Poison when the run raised one of ``exception_types`` (no retry can help)."""

    name = "exception-type"

    def __init__(
        self,
        exception_types: Iterable[type[BaseException]],
        reason: DeadLetterReason | str = DeadLetterReason.POISON_MESSAGE,
    ) -> None:
        self.exception_types = tuple(exception_types)
        if not all(
            isinstance(t, type) and issubclass(t, BaseException) for t in self.exception_types
        ):
            raise ConfigurationError(
                f"exception_types must be exception classes: {exception_types!r}"
            )
        try:
            self.reason = reason_of(reason)
        except ValueError as exc:
            raise ConfigurationError(str(exc)) from None

    def __call__(self, context: FailureContext) -> Verdict | None:
        exc = context.exception
        if exc is not None and isinstance(exc, self.exception_types):
            return Verdict(self.reason, self.name, f"{type(exc).__name__} is never retried")
        return None


class TimespanDetector:
    """Poison: first seen over ``max_age`` ago, or a run failed after ``max_processing_time``."""

    name = "timespan"

    def __init__(
        self, max_age: timedelta | None = None, max_processing_time: timedelta | None = None
    ) -> None:
        for value, what in ((max_age, "max_age"), (max_processing_time, "max_processing_time")):
            if value is not None and (not isinstance(value, timedelta) or value <= timedelta(0)):
                raise ConfigurationError(f"{what} must be a positive timedelta, got {value!r}")
        self.max_age = max_age
        self.max_processing_time = max_processing_time

    def __call__(self, context: FailureContext) -> Verdict | None:
        if self.max_age is not None and context.first_seen_at is not None:
            age = context.now - context.first_seen_at
            if age > self.max_age:
                return Verdict(
                    DeadLetterReason.POISON_MESSAGE,
                    self.name,
                    f"first seen {age} ago, more than max_age {self.max_age}",
                )
        if self.max_processing_time is not None and context.exception is not None:
            took = context.now - context.run_started_at
            if took > self.max_processing_time:
                return Verdict(
                    DeadLetterReason.POISON_MESSAGE,
                    self.name,
                    f"failed after running {took}, more than max_processing_time "
                    f"{self.max_processing_time}",
                )
        return None


class CompositeDetector:
    """Several detectors as one: the first verdict wins."""

    def __init__(self, *detectors: PoisonDetector, name: str = "composite") -> None:
        self.detectors = tuple(as_detector(d) for d in detectors)
        self.name = name

    def __call__(self, context: FailureContext) -> Verdict | None:
        for detector in self.detectors:
            verdict = detector(context)
            if verdict is not None:
                return verdict
        return None


class _Named:
    """A plain function as a detector, named after it."""

    def __init__(self, function: Callable[[FailureContext], Verdict | None]) -> None:
        self.function = function
        self.name = getattr(function, "__qualname__", None) or repr(function)

    def __call__(self, context: FailureContext) -> Verdict | None:
        return self.function(context)


def as_detector(candidate: Any) -> PoisonDetector:
    """A detector object as is, a plain callable wrapped; anything else refused."""
    if isinstance(candidate, PoisonDetector):
        return candidate
    if callable(candidate):
        return _Named(candidate)
    raise ConfigurationError(
        f"a poison detector must be callable with a FailureContext, got {candidate!r}"
    )


def judge(detectors: Iterable[PoisonDetector], context: FailureContext) -> Verdict | None:
    """The first verdict of ``detectors``; a detector that returns something else is an error.

    A detector that raises is a verdict too (``UnhandledException``): a broken detector
    must not let a message loop forever, and the entry names which detector broke.
    """
    for detector in detectors:
        try:
            verdict = detector(context)
        except Exception as exc:
            return Verdict(
                DeadLetterReason.UNHANDLED_EXCEPTION,
                detector.name,
                f"poison detector {detector.name!r} raised {type(exc).__name__}: {exc}",
            )
        if verdict is None:
            continue
        if not isinstance(verdict, Verdict):
            return Verdict(
                DeadLetterReason.UNHANDLED_EXCEPTION,
                detector.name,
                f"poison detector {detector.name!r} returned {verdict!r}, not a Verdict or None",
            )
        return verdict
    return None
