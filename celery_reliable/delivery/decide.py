"""How a delivery ends: pure decisions over values, performed by :mod:`.outcomes`.

Every ending of a claimed delivery comes from :func:`decide_claim` (what the claim allows)
or :func:`decide_failure` (what to do when the run raised). Both are functions of values
(the claim, the failure as :func:`failure_of` classifies it, the detectors' verdict, the
retry policy): no I/O and no clock, so ``tests/unit/test_delivery_decide.py`` covers them
as a table, as ``inbox.decide`` is covered. The order of the failure rules:

1. another delivery took the claim over: end without touching it (``LOST``);
2. the completion mark is committed (``replace()`` commits it before raising Celery's
   ``Ignore``): the effects happened once, let Celery see the ending;
3. Celery's own ``Retry``/``Ignore``: the body decided, record the failure and pass it on;
4. our store failed during the run: nobody's fault, defer and resume this claim;
5. ``Reject(requeue=True)``: back to the broker as is;
6. Celery gave up retrying (``self.retry()`` past ``max_retries``, ``autoretry_for``
   included): dead-letter now with ``MaxRetriesExceeded``, so Celery's counts hold;
7. ``PermanentFailure``, ``Reject(requeue=False)``, a poison exception, a misuse of
   ``self.transaction()`` (retrying it would repeat what it committed): dead-letter now;
8. a poison detector's verdict: dead-letter with its reason and name;
9. an unclassified exception when the task names no ``retry_policy``: dead-letter now
   with ``UnhandledException``, as plain Celery fails at once (a ``TypeError`` from wrong
   arguments is a bug that a retry cannot fix);
10. a transient exception (or an unclassified one, when the task names a policy) is
    retried while the retry policy allows: the task's, or the ``"default"`` one;
11. otherwise: dead-letter with ``MaxRetriesExceeded``.

``reliable_max_attempts`` is not a rule here: it bounds every run, crashes included, when
the message is claimed (:func:`decide_claim`), the last resort behind all of these.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from celery.exceptions import Ignore, Reject, Retry
from sqlalchemy.exc import InterfaceError, OperationalError

from celery_reliable.classify import Classifier, Kind
from celery_reliable.dead_letters.types import DeadLetterReason, reason_of
from celery_reliable.exceptions import (
    LostOwnership,
    PermanentFailure,
    StoreUnavailable,
    TransactionMisuse,
)
from celery_reliable.inbox import Claim, Outcome
from celery_reliable.poison import Verdict
from celery_reliable.retry import RetryPolicy

from .options import TaskOptions


class Action(enum.Enum):
    """What the pipeline does to end (or go on with) a delivery."""

    RUN = "run"  # this delivery owns the claim: run the body
    DUPLICATE = "duplicate"  # completed before: announce DUPLICATE with the stored result
    DEFER = "defer"  # nobody's failure: publish the same message again later
    RETRY = "retry"  # the run failed: publish it again after the policy's delay
    DEAD_LETTER = "dead_letter"  # store a dead letter and quarantine the claim, together
    QUARANTINED = "quarantined"  # a copy of a message already dead-lettered: it stays dead
    REQUEUE = "requeue"  # the body's Reject(requeue=True): re-raise it
    PASS = "pass"  # Celery's own ending: re-raise what the body raised
    LOST = "lost"  # another delivery owns the claim now: end without a trace


class Cause(enum.Enum):
    """Why a run raised, as far as the decision cares."""

    LOST = "lost"  # LostOwnership: the claim was taken over
    STORE = "store"  # the reliable store failed during the run (ours, not the body's)
    CELERY = "celery"  # Retry or Ignore raised by the body: Celery's control flow
    GAVE_UP = "gave_up"  # self.retry() past Celery's max_retries: its count is used up
    PERMANENT = "permanent"  # PermanentFailure: the body says stop
    REQUEUE = "requeue"  # Reject(requeue=True)
    REJECT = "reject"  # Reject(requeue=False)
    POISON = "poison"  # declared or classified poison
    MISUSE = "misuse"  # TransactionMisuse: the body broke self.transaction()'s contract
    TRANSIENT = "transient"
    UNCLASSIFIED = "unclassified"

    @property
    def consults_detectors(self) -> bool:
        """Detectors only judge failures no earlier rule has decided."""
        return self in (Cause.TRANSIENT, Cause.UNCLASSIFIED)

    @property
    def is_body_error(self) -> bool:
        """The body failed on its own (what a circuit breaker counts), not our store, a
        takeover or Celery's control flow."""
        return self not in (Cause.LOST, Cause.STORE, Cause.CELERY)


@dataclass(frozen=True)
class Failure:
    """A run's exception, classified: the decision's view of it."""

    cause: Cause
    type_name: str
    message: str
    #: PERMANENT: the reason the body asked for (None when it named no known reason).
    reason: DeadLetterReason | None = None
    #: PERMANENT with an unknown reason: why it was refused.
    detail: str | None = None

    @property
    def summary(self) -> str:
        return f"{self.type_name}: {self.message}"


@dataclass(frozen=True)
class Decision:
    """One ending, with what performing it needs."""

    action: Action
    reason: DeadLetterReason | None = None
    detector: str | None = None
    detail: str | None = None
    #: RETRY: seconds to wait; DEFER: seconds, or None for the growing deferral backoff.
    delay: float | None = None
    #: Why, for the log and for Celery's Retry or the deferral.
    note: str = ""
    #: DEFER: the claim version the copy may take over at once.
    resumes_version: int | None = None
    #: DEFER: that claim never ran the body, so resuming it is the same attempt.
    unrun: bool = False
    #: Write the failure on the inbox row first, so the next copy may claim at once.
    record_failure: bool = False


def dead_letter(
    reason: DeadLetterReason, *, detector: str | None = None, detail: str | None = None
) -> Decision:
    return Decision(Action.DEAD_LETTER, reason=reason, detector=detector, detail=detail)


def judged(verdict: Verdict) -> Decision:
    """A detector's verdict as a dead letter."""
    return dead_letter(verdict.reason, detector=verdict.detector, detail=verdict.detail)


def decide_claim(claim: Claim, *, open_breaker: str | None = None) -> Decision:
    """What the claim lets this delivery do; ``open_breaker`` names a breaker that is open
    with ``on_open="dead_letter"``."""
    if claim.outcome is Outcome.DUPLICATE:
        return Decision(Action.DUPLICATE)
    if claim.outcome is Outcome.IN_FLIGHT:
        return Decision(
            Action.DEFER, delay=claim.retry_in.total_seconds(), note="in flight elsewhere"
        )
    if claim.outcome is Outcome.POISONED:
        return Decision(Action.QUARANTINED)
    if claim.outcome is Outcome.EXHAUSTED:
        return dead_letter(
            DeadLetterReason.POISON_MESSAGE,
            detail=f"used up reliable_max_attempts ({claim.attempts} runs): it keeps "
            "failing or killing its worker",
            detector="max-attempts",
        )
    if open_breaker is not None:
        return dead_letter(
            DeadLetterReason.CIRCUIT_BREAKER_OPEN,
            detail=f"circuit breaker {open_breaker!r} is open",
            detector="circuit-breaker",
        )
    return Decision(Action.RUN)


def decide_failure(
    failure: Failure,
    *,
    claim: Claim,
    committed: bool,
    verdict: Verdict | None,
    policy: RetryPolicy,
    explicit_policy: bool,
) -> Decision:
    """How a run that raised ends (the rules are listed in the module's docstring).

    ``verdict`` is the detectors' finding, consulted only when ``failure.cause`` asks for it;
    ``policy`` is the task's retry policy, ``explicit_policy`` whether the task named it
    (otherwise it is the ``"default"`` policy, which retries transient errors only).
    """
    cause = failure.cause
    if cause is Cause.LOST:
        return Decision(Action.LOST)
    if committed:  # the effects are committed; only what followed the commit raised
        return Decision(Action.PASS)
    if cause is Cause.CELERY:
        return Decision(Action.PASS, record_failure=True)
    if cause is Cause.STORE:
        return Decision(
            Action.DEFER,
            note=failure.message,
            resumes_version=claim.version,
            record_failure=True,
        )
    if cause is Cause.REQUEUE:
        return Decision(Action.REQUEUE, record_failure=True)
    if cause is Cause.GAVE_UP:
        return dead_letter(
            DeadLetterReason.MAX_RETRIES_EXCEEDED,
            detail=f"Celery's max_retries used up on run {claim.attempts}",
            detector="celery-max-retries",
        )
    if cause is Cause.PERMANENT:
        if failure.reason is None:  # still dead-lettered: the body meant it to stop
            return dead_letter(DeadLetterReason.UNHANDLED_EXCEPTION, detail=failure.detail)
        return dead_letter(failure.reason, detector="permanent-failure")
    if cause is Cause.REJECT:
        return dead_letter(DeadLetterReason.MANUAL_REJECTION, detector="reject")
    if cause is Cause.POISON:
        return dead_letter(DeadLetterReason.POISON_MESSAGE, detector="exception-classification")
    if cause is Cause.MISUSE:
        return dead_letter(
            DeadLetterReason.UNHANDLED_EXCEPTION,
            detector="transaction-misuse",
            detail=failure.message,
        )
    if verdict is not None:
        return judged(verdict)
    if cause is Cause.UNCLASSIFIED and not explicit_policy:
        return dead_letter(
            DeadLetterReason.UNHANDLED_EXCEPTION,
            detail="not a transient exception, and the task names no retry_policy",
            detector="exception-classification",
        )
    if not policy.allows_retry_after(claim.attempts):
        return dead_letter(
            DeadLetterReason.MAX_RETRIES_EXCEEDED,
            detail=f"failed on run {claim.attempts}",
            detector="retry-policy",
        )
    return Decision(
        Action.RETRY,
        delay=policy.delay(claim.attempts),
        note=failure.summary,
        record_failure=True,
    )


def failure_of(
    exc: Exception, *, classifier: Classifier, options: TaskOptions, gave_up: bool = False
) -> Failure:
    """Classify what a run raised (no I/O: type checks and the exception's cause chain).

    ``gave_up``: the run's ``self.retry()`` found Celery's ``max_retries`` used up (what it
    raises then is the body's own exception, or ``MaxRetriesExceededError``).
    """
    name, message = type(exc).__name__, str(exc)
    if isinstance(exc, LostOwnership):
        return Failure(Cause.LOST, name, message)
    if isinstance(exc, (StoreUnavailable, OperationalError, InterfaceError)):
        return Failure(Cause.STORE, name, message)
    if isinstance(exc, (Retry, Ignore)):
        return Failure(Cause.CELERY, name, message)
    if gave_up:
        return Failure(Cause.GAVE_UP, name, message)
    if isinstance(exc, TransactionMisuse):
        return Failure(Cause.MISUSE, name, message)
    if isinstance(exc, PermanentFailure):
        try:
            return Failure(Cause.PERMANENT, name, message, reason=reason_of(exc.reason))
        except ValueError as bad:
            return Failure(Cause.PERMANENT, name, message, detail=str(bad))
    if isinstance(exc, Reject):
        return Failure(Cause.REQUEUE if exc.requeue else Cause.REJECT, name, message)
    kind = classifier.classify(exc, task_transient=options.transient, task_poison=options.poison)
    cause = {Kind.POISON: Cause.POISON, Kind.TRANSIENT: Cause.TRANSIENT}.get(
        kind, Cause.UNCLASSIFIED
    )
    return Failure(cause, name, message)
