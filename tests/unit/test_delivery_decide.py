"""The delivery's decision tables: how a claim, and a run that raised, end."""

from datetime import timedelta

import pytest
from celery.exceptions import Ignore, Reject, Retry
from sqlalchemy.exc import OperationalError

from celery_reliable import DeadLetterReason, LostOwnership, PermanentFailure, StoreUnavailable
from celery_reliable.classify import Classifier
from celery_reliable.delivery.decide import (
    Action,
    Cause,
    Failure,
    decide_claim,
    decide_failure,
    failure_of,
)
from celery_reliable.delivery.options import TaskOptions
from celery_reliable.inbox import Claim, Outcome
from celery_reliable.poison import Verdict
from celery_reliable.retry import RetryPolicy

R = DeadLetterReason
POLICY = RetryPolicy.fixed(max_retries=2, delay=7)  # three runs in all, 7 s apart
VERDICT = Verdict(R.POISON_MESSAGE, "timespan", "too old")


def claim(outcome=Outcome.RUN, attempts=1, version=3, retry_in=timedelta(0)):
    return Claim(outcome, "m-1", "key", attempts, version, retry_in=retry_in)


def failure(cause, reason=None, detail=None):
    return Failure(cause, "ValueError", "boom", reason=reason, detail=detail)


def decided(
    cause, attempts=1, committed=False, verdict=None, reason=None, detail=None, explicit=True
):
    decision = decide_failure(
        failure(cause, reason, detail),
        claim=claim(attempts=attempts),
        committed=committed,
        verdict=verdict,
        policy=POLICY,
        explicit_policy=explicit,
    )
    return (
        decision.action,
        decision.reason,
        decision.detector,
        decision.record_failure,
    )


# (cause, attempts, committed, verdict) -> (action, dead-letter reason, detector, recorded)
FAILURES = [
    # a takeover ends the run without a trace, committed or not
    ((Cause.LOST, 1, False, None), (Action.LOST, None, None, False)),
    ((Cause.LOST, 1, True, None), (Action.LOST, None, None, False)),
    # after the commit every error is Celery's to report: the effects happened once
    ((Cause.UNCLASSIFIED, 1, True, VERDICT), (Action.PASS, None, None, False)),
    ((Cause.STORE, 1, True, None), (Action.PASS, None, None, False)),
    ((Cause.CELERY, 1, True, None), (Action.PASS, None, None, False)),
    ((Cause.POISON, 1, True, None), (Action.PASS, None, None, False)),
    # Celery's own Retry / Ignore: the body decided; the failure is recorded
    ((Cause.CELERY, 9, False, VERDICT), (Action.PASS, None, None, True)),
    # Celery gave up retrying (max_retries): its count holds, whatever the policy says
    (
        (Cause.GAVE_UP, 1, False, VERDICT),
        (Action.DEAD_LETTER, R.MAX_RETRIES_EXCEEDED, "celery-max-retries", False),
    ),
    ((Cause.GAVE_UP, 1, True, None), (Action.PASS, None, None, False)),
    # our store failed: nobody's fault, defer however many runs were used
    ((Cause.STORE, 9, False, VERDICT), (Action.DEFER, None, None, True)),
    ((Cause.REQUEUE, 9, False, VERDICT), (Action.REQUEUE, None, None, True)),
    # dead-lettered at once, before any detector or budget
    ((Cause.REJECT, 1, False, VERDICT), (Action.DEAD_LETTER, R.MANUAL_REJECTION, "reject", False)),
    (
        (Cause.POISON, 1, False, VERDICT),
        (Action.DEAD_LETTER, R.POISON_MESSAGE, "exception-classification", False),
    ),
    # a detector's verdict beats the retry budget
    (
        (Cause.UNCLASSIFIED, 1, False, VERDICT),
        (Action.DEAD_LETTER, R.POISON_MESSAGE, "timespan", False),
    ),
    (
        (Cause.TRANSIENT, 1, False, VERDICT),
        (Action.DEAD_LETTER, R.POISON_MESSAGE, "timespan", False),
    ),
    # transient, or unclassified with a policy the task names: the policy (max_retries=2)
    # bounds the runs (issue #14: transient errors used to run up to reliable_max_attempts)
    ((Cause.UNCLASSIFIED, 1, False, None), (Action.RETRY, None, None, True)),
    ((Cause.UNCLASSIFIED, 2, False, None), (Action.RETRY, None, None, True)),
    (
        (Cause.UNCLASSIFIED, 3, False, None),
        (Action.DEAD_LETTER, R.MAX_RETRIES_EXCEEDED, "retry-policy", False),
    ),
    ((Cause.TRANSIENT, 1, False, None), (Action.RETRY, None, None, True)),
    ((Cause.TRANSIENT, 2, False, None), (Action.RETRY, None, None, True)),
    (
        (Cause.TRANSIENT, 3, False, None),
        (Action.DEAD_LETTER, R.MAX_RETRIES_EXCEEDED, "retry-policy", False),
    ),
]


@pytest.mark.parametrize(("given", "expected"), FAILURES)
def test_how_a_failed_run_ends(given, expected):
    cause, attempts, committed, verdict = given
    assert decided(cause, attempts, committed, verdict) == expected


# (cause, attempts, verdict) -> (action, reason, detector, recorded), the task naming no policy
WITHOUT_A_POLICY = [
    # an unclassified exception fails at once, as on plain Celery (a TypeError is a bug)
    (
        (Cause.UNCLASSIFIED, 1, None),
        (Action.DEAD_LETTER, R.UNHANDLED_EXCEPTION, "exception-classification", False),
    ),
    # a detector still names its own reason
    ((Cause.UNCLASSIFIED, 1, VERDICT), (Action.DEAD_LETTER, R.POISON_MESSAGE, "timespan", False)),
    # transient errors are retried under the default policy
    ((Cause.TRANSIENT, 1, None), (Action.RETRY, None, None, True)),
    (
        (Cause.TRANSIENT, 3, None),
        (Action.DEAD_LETTER, R.MAX_RETRIES_EXCEEDED, "retry-policy", False),
    ),
]


@pytest.mark.parametrize(("given", "expected"), WITHOUT_A_POLICY)
def test_how_a_failed_run_ends_when_the_task_names_no_retry_policy(given, expected):
    cause, attempts, verdict = given
    assert decided(cause, attempts, verdict=verdict, explicit=False) == expected


def test_a_permanent_failure_is_dead_lettered_with_its_own_reason():
    assert decided(Cause.PERMANENT, reason=R.VALIDATION_FAILED, verdict=VERDICT) == (
        Action.DEAD_LETTER,
        R.VALIDATION_FAILED,
        "permanent-failure",
        False,
    )


def test_a_permanent_failure_with_an_unknown_reason_is_still_dead_lettered():
    decision = decide_failure(
        failure(Cause.PERMANENT, detail="unknown dead-letter reason 'Nope'"),
        claim=claim(),
        committed=False,
        verdict=None,
        policy=POLICY,
        explicit_policy=True,
    )
    assert (decision.action, decision.reason, decision.detector, decision.detail) == (
        Action.DEAD_LETTER,
        R.UNHANDLED_EXCEPTION,
        None,
        "unknown dead-letter reason 'Nope'",
    )


def test_a_retry_waits_the_policys_delay_and_says_why():
    decision = decide_failure(
        failure(Cause.UNCLASSIFIED),
        claim=claim(attempts=1),
        committed=False,
        verdict=None,
        policy=POLICY,
        explicit_policy=True,
    )
    assert (decision.delay, decision.note) == (7, "ValueError: boom")


def test_a_store_failure_resumes_its_own_claim():
    decision = decide_failure(
        failure(Cause.STORE),
        claim=claim(version=3),
        committed=False,
        verdict=None,
        policy=POLICY,
        explicit_policy=True,
    )
    assert (decision.resumes_version, decision.unrun, decision.delay) == (3, False, None)


@pytest.mark.parametrize(
    ("cause", "consults", "body_error"),
    [
        (Cause.LOST, False, False),
        (Cause.STORE, False, False),
        (Cause.CELERY, False, False),
        (Cause.GAVE_UP, False, True),
        (Cause.PERMANENT, False, True),
        (Cause.REQUEUE, False, True),
        (Cause.REJECT, False, True),
        (Cause.POISON, False, True),
        (Cause.TRANSIENT, True, True),
        (Cause.UNCLASSIFIED, True, True),
    ],
)
def test_which_causes_consult_detectors_and_count_against_a_breaker(cause, consults, body_error):
    assert (cause.consults_detectors, cause.is_body_error) == (consults, body_error)


# claim outcome (and a breaker open with on_open="dead_letter") -> action, reason, detector
CLAIMS = [
    ((Outcome.RUN, None), (Action.RUN, None, None)),
    ((Outcome.DUPLICATE, "pay"), (Action.DUPLICATE, None, None)),
    ((Outcome.IN_FLIGHT, "pay"), (Action.DEFER, None, None)),
    ((Outcome.POISONED, "pay"), (Action.QUARANTINED, None, None)),
    ((Outcome.EXHAUSTED, "pay"), (Action.DEAD_LETTER, R.POISON_MESSAGE, "max-attempts")),
    ((Outcome.RUN, "pay"), (Action.DEAD_LETTER, R.CIRCUIT_BREAKER_OPEN, "circuit-breaker")),
]


@pytest.mark.parametrize(("given", "expected"), CLAIMS)
def test_what_a_claim_lets_the_delivery_do(given, expected):
    outcome, open_breaker = given
    decision = decide_claim(claim(outcome, attempts=5), open_breaker=open_breaker)
    assert (decision.action, decision.reason, decision.detector) == expected


def test_a_message_in_flight_elsewhere_comes_back_when_its_lease_may_end():
    decision = decide_claim(claim(Outcome.IN_FLIGHT, retry_in=timedelta(seconds=2)))
    assert (decision.delay, decision.resumes_version) == (2.0, None)


OPTIONS = TaskOptions(
    task_name="t",
    handler_keys=("t",),
    transient=(KeyError,),
    poison=(ValueError,),
    detectors=(),
    retry_policy=POLICY,
    explicit_policy=True,
    circuit_breaker=None,
    needs_first_seen=False,
)


@pytest.mark.parametrize(
    ("exc", "cause"),
    [
        (LostOwnership(), Cause.LOST),
        (StoreUnavailable("gone"), Cause.STORE),
        (OperationalError("SELECT 1", {}, Exception("closed")), Cause.STORE),
        (Retry(), Cause.CELERY),
        (Ignore(), Cause.CELERY),
        (PermanentFailure("no", reason="ValidationFailed"), Cause.PERMANENT),
        (Reject("no", requeue=True), Cause.REQUEUE),
        (Reject("no", requeue=False), Cause.REJECT),
        (ValueError("task poison"), Cause.POISON),
        (KeyError("task transient"), Cause.TRANSIENT),
        (ConnectionError("built-in transient"), Cause.TRANSIENT),
        (RuntimeError("anything else"), Cause.UNCLASSIFIED),
    ],
)
def test_what_a_run_raised_is_classified(exc, cause):
    assert failure_of(exc, classifier=Classifier((), ()), options=OPTIONS).cause is cause


@pytest.mark.parametrize(
    ("exc", "cause"),
    [
        (ValueError("the body's own, re-raised by self.retry"), Cause.GAVE_UP),
        (RuntimeError("MaxRetriesExceededError"), Cause.GAVE_UP),
        (Retry(), Cause.CELERY),  # a retry after giving up is still Celery's to handle
        (StoreUnavailable("gone"), Cause.STORE),
    ],
)
def test_a_run_whose_retry_celery_gave_up_on_is_classified_so(exc, cause):
    given = {"classifier": Classifier((), ()), "options": OPTIONS, "gave_up": True}
    assert failure_of(exc, **given).cause is cause


def test_a_permanent_failure_keeps_its_reason_or_why_it_was_refused():
    classify = {"classifier": Classifier((), ()), "options": OPTIONS}
    known = failure_of(PermanentFailure("x", reason="ValidationFailed"), **classify)
    unknown = failure_of(PermanentFailure("x", reason="Nope"), **classify)
    assert (known.reason, known.detail) == (R.VALIDATION_FAILED, None)
    assert unknown.reason is None
    assert "Nope" in unknown.detail
