"""Poison detectors and how their verdicts are combined (pure logic)."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest

from celery_reliable import ConfigurationError
from celery_reliable.dead_letters import DeadLetterReason
from celery_reliable.poison import (
    CompositeDetector,
    ExceptionTypeDetector,
    FailureContext,
    RetryCountDetector,
    TimespanDetector,
    Verdict,
    as_detector,
    judge,
)

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=timezone.utc)
CONTEXT = FailureContext(
    task_name="charge",
    handler_key="charge",
    message_id="order-1",
    attempts=1,
    exception=ValueError("bad"),
    first_seen_at=NOW - timedelta(minutes=1),
    run_started_at=NOW - timedelta(seconds=2),
    now=NOW,
)


def test_retry_count():
    detector = RetryCountDetector(3)
    assert detector(replace(CONTEXT, attempts=2)) is None
    verdict = detector(replace(CONTEXT, attempts=3))
    assert verdict == Verdict(DeadLetterReason.MAX_RETRIES_EXCEEDED, "retry-count", verdict.detail)
    assert detector(replace(CONTEXT, attempts=9, exception=None)) is None  # before a run


def test_exception_type_with_its_own_reason():
    detector = ExceptionTypeDetector([KeyError, ValueError], reason="ValidationFailed")
    verdict = detector(CONTEXT)
    assert verdict is not None
    assert verdict.reason is DeadLetterReason.VALIDATION_FAILED
    assert detector(replace(CONTEXT, exception=RuntimeError())) is None
    with pytest.raises(ConfigurationError):
        ExceptionTypeDetector([ValueError], reason="Bogus")


def test_timespan_max_age_and_max_processing_time():
    old = TimespanDetector(max_age=timedelta(seconds=30))
    assert old(CONTEXT).reason is DeadLetterReason.POISON_MESSAGE  # first seen 1 min ago
    assert old(replace(CONTEXT, first_seen_at=NOW)) is None
    slow = TimespanDetector(max_processing_time=timedelta(seconds=1))
    assert "max_processing_time" in slow(CONTEXT).detail
    assert slow(replace(CONTEXT, exception=None)) is None  # only a failed run counts
    with pytest.raises(ConfigurationError, match="max_age"):
        TimespanDetector(max_age=timedelta(0))


def test_composite_first_verdict_wins():
    composite = CompositeDetector(
        TimespanDetector(max_age=timedelta(hours=1)), ExceptionTypeDetector([ValueError])
    )
    assert composite(CONTEXT).detector == "exception-type"
    assert composite(replace(CONTEXT, exception=RuntimeError())) is None


def test_user_callables_are_named_after_themselves():
    def too_big(context):
        if context.args and context.args[0] > 100:
            return Verdict(DeadLetterReason.VALIDATION_FAILED, "too_big", "amount over 100")
        return None

    detector = as_detector(too_big)
    assert detector.name.endswith("too_big")
    assert judge([detector], replace(CONTEXT, args=(500,))).reason == "ValidationFailed"
    assert judge([detector], replace(CONTEXT, args=(5,))) is None
    with pytest.raises(ConfigurationError, match="must be callable"):
        as_detector("not a detector")


def test_a_broken_detector_is_a_verdict_not_a_loop():
    def broken(context):
        raise RuntimeError("oops")

    def confused(context):
        return "yes"

    verdict = judge([as_detector(broken)], CONTEXT)
    assert verdict.reason is DeadLetterReason.UNHANDLED_EXCEPTION
    assert "raised RuntimeError: oops" in verdict.detail
    assert judge([as_detector(confused)], CONTEXT).reason is DeadLetterReason.UNHANDLED_EXCEPTION


def test_reasons_are_str_values_with_upper_snake_names():
    assert DeadLetterReason.MAX_RETRIES_EXCEEDED == "MaxRetriesExceeded"
    assert len(DeadLetterReason) == 10
    for reason in DeadLetterReason:
        snake = "".join("_" + c if c.isupper() else c.upper() for c in reason.value).lstrip("_")
        assert reason.name == snake
