"""The failure lifecycle of one delivery: retry → poison detection → dead letter.

:class:`Delivery` is what ``ReliableTask`` hands a failed (or not-to-be-run) delivery to.
It decides, in this order:

1. the exception is declared poison (task or global), or is a ``PermanentFailure``, or a
   ``Reject(requeue=False)``: dead-letter now;
2. a poison detector has a verdict: dead-letter with its reason and name;
3. a transient exception is retried while the message has runs left under
   ``reliable_max_attempts``; anything else while the retry policy allows;
4. otherwise: dead-letter with ``MaxRetriesExceeded``.

A retry is published before this delivery is acknowledged (so one copy always exists) and
waits on the broker when short, or in the store (the outbox's delayed publish) when longer
than ``reliable_retry_max_broker_delay``. A dead letter commits in one transaction with
the inbox's quarantine mark; the task then ends in state ``DEAD_LETTERED``.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, NoReturn

from celery.exceptions import Ignore, Reject, Retry
from sqlalchemy.exc import DBAPIError

from .classify import Kind
from .clock import utcnow
from .dead_letters import DeadLetterReason, FailedMessage, reason_of
from .exceptions import LostOwnership, PermanentFailure, ReliableError
from .extension import Reliable
from .inbox import Claim
from .message import DEFERRALS_HEADER, RESUMES_HEADER, RESUMES_UNRUN_HEADER, SENT_AT_HEADER
from .poison import FailureContext, judge
from .states import DEAD_LETTERED, announce

if TYPE_CHECKING:
    from .task import ReliableTask

logger = logging.getLogger(__name__)

_MAX_DEFER_DELAY = 60.0


def count_header(value: object) -> int:
    """A non-negative count from a header a sender could have set to anything."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


class Delivery:
    """One delivery of a message to a ReliableTask, as far as failures are concerned."""

    def __init__(
        self,
        task: ReliableTask,
        request: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        message_id: str,
    ) -> None:
        self.task = task
        self.reliable = Reliable.of(task.app)
        self.request = request
        self.args = args
        self.kwargs = kwargs
        self.message_id = message_id
        self.claim: Claim | None = None
        self.started_at: datetime = utcnow()
        #: How this delivery ended, for the metrics: completed, duplicate, retry, deferred,
        #: dead_lettered, lost or failed.
        self.outcome = "failed"

    # -- deciding ---------------------------------------------------------------------------

    def failed(self, exc: Exception) -> NoReturn:
        """The body raised ``exc``: retry, or dead-letter."""
        claim = self.claim
        assert claim is not None
        if isinstance(exc, PermanentFailure):
            try:
                reason = reason_of(exc.reason)
            except ValueError as bad:  # still dead-lettered: the body meant it to stop
                self.dead_letter(DeadLetterReason.UNHANDLED_EXCEPTION, exc=exc, detail=str(bad))
            self.dead_letter(reason, exc=exc, detector="permanent-failure")
        if isinstance(exc, Reject):
            if exc.requeue:
                self.record_failure(exc)
                raise exc
            self.dead_letter(DeadLetterReason.MANUAL_REJECTION, exc=exc, detector="reject")
        kind = self.reliable.classifier.classify(
            exc,
            task_transient=self.task.resolved_transient_exceptions(),
            task_poison=self.task.resolved_poison_exceptions(),
        )
        if kind is Kind.POISON:
            self.dead_letter(
                DeadLetterReason.POISON_MESSAGE, exc=exc, detector="exception-classification"
            )
        verdict = judge(self._detectors(), self._context(exc))
        if verdict is not None:
            self.dead_letter(
                verdict.reason, exc=exc, detail=verdict.detail, detector=verdict.detector
            )
        policy = self.reliable.retry_policies.resolve(self.task.retry_policy)
        if kind is Kind.TRANSIENT:
            may_retry = claim.attempts < self.reliable.settings.max_attempts
        else:
            may_retry = policy.allows_retry_after(claim.attempts)
        if not may_retry:
            self.dead_letter(
                DeadLetterReason.MAX_RETRIES_EXCEEDED,
                exc=exc,
                detail=f"failed on run {claim.attempts}",
                detector="retry-policy" if kind is not Kind.TRANSIENT else "max-attempts",
            )
        self.record_failure(exc)
        self.retry_later(
            policy.delay(claim.attempts), reason=f"{type(exc).__name__}: {exc}", exc=exc
        )

    def judge_before_running(self) -> None:
        """A message that comes back (retry, redelivery) may have become poison meanwhile."""
        detectors = self._detectors()
        if detectors:
            verdict = judge(detectors, self._context(None))
            if verdict is not None:
                self.dead_letter(verdict.reason, detail=verdict.detail, detector=verdict.detector)

    def _detectors(self) -> list[Any]:
        return [*self.task.own_detectors(), *self.reliable.poison_detectors]

    def _context(self, exc: BaseException | None) -> FailureContext:
        claim = self.claim
        assert claim is not None
        first_seen = None
        if self.task.max_age is not None or self.reliable.poison_detectors:
            first_seen = self.reliable.store.first_seen_at(self.message_id)
        return FailureContext(
            task_name=self.task.name,
            handler_key=claim.handler_key,
            message_id=self.message_id,
            attempts=claim.attempts,
            exception=exc,
            first_seen_at=first_seen,
            run_started_at=self.started_at,
            now=utcnow(),
            args=self.args,
            kwargs=self.kwargs,
        )

    def record_failure(self, exc: BaseException) -> None:
        if self.claim is None:
            return
        try:
            self.reliable.inbox.fail(self.claim, f"{type(exc).__name__}: {exc}")
        except Exception:  # never mask the task's own exception
            logger.warning("could not record the failure of %s", self.message_id, exc_info=True)

    # -- outcomes ---------------------------------------------------------------------------

    def retry_later(
        self, delay: float, *, reason: str, exc: BaseException | None = None
    ) -> NoReturn:
        """Publish this message again after ``delay`` seconds, then end in state RETRY.

        Short delays wait on the broker (Celery's countdown). Longer ones wait in the
        store, from where the relay publishes them when due: a Redis queue would hand an
        unacknowledged countdown message to another worker after its visibility timeout.
        """
        task, request = self.task, self.request
        if request.is_eager:
            raise Retry(reason, exc=exc, when=delay)
        self.outcome = "retry"
        headers = {**(request.headers or {}), SENT_AT_HEADER: time.time() + delay}
        signature = task.signature_from_request(
            request, self.args, self.kwargs, retries=(request.retries or 0) + 1, headers=headers
        )
        try:
            if delay <= self.reliable.settings.retry_max_broker_delay.total_seconds():
                signature.apply_async(countdown=delay)
            else:
                with self.reliable.database.engine.begin() as conn:
                    self.reliable.outbox.enqueue(conn, signature, countdown=delay)
        except Exception as publish_error:
            raise Reject(
                f"could not schedule the retry ({publish_error}); requeued", requeue=True
            ) from publish_error
        logger.info("message %s retried in %.1fs: %s", self.message_id, delay, reason)
        raise Retry(reason, exc=exc, when=delay)

    def defer(
        self,
        abandoned_version: int | None,
        *,
        reason: str,
        delay: timedelta | None = None,
        unrun: bool = False,
    ) -> NoReturn:
        """Publish this message again later (same id), then end this delivery.

        For waits that are nobody's failure: a live delivery holds the claim, or the store
        is unreachable. The copy is published before this delivery is acknowledged, so at
        every moment one of them is on the broker. If publishing fails too, the delivery is
        requeued.
        """
        self.outcome = "deferred"
        request = self.request
        if request.is_eager:  # no broker to come back through: say why instead of recursing
            raise ReliableError(f"message {request.id} cannot run now ({reason})")
        headers = dict(request.headers or {})
        deferrals = count_header(headers.get(DEFERRALS_HEADER)) + 1
        headers[DEFERRALS_HEADER] = deferrals
        if abandoned_version is not None:
            headers[RESUMES_HEADER] = abandoned_version
        if unrun:  # the abandoned claim never ran the body: resuming it is the same attempt
            headers[RESUMES_UNRUN_HEADER] = True
        else:
            headers.pop(RESUMES_UNRUN_HEADER, None)
        seconds = (
            delay.total_seconds()
            if delay is not None
            else min(_MAX_DEFER_DELAY, 0.5 * 2 ** min(deferrals, 8))
        )
        headers[SENT_AT_HEADER] = time.time() + seconds
        # Waiting for a live delivery is routine; losing the store is not.
        level = logging.INFO if delay is not None else logging.WARNING
        logger.log(level, "message %s deferred %.1fs: %s", request.id, seconds, reason)
        try:
            self.task.signature_from_request(
                request, countdown=seconds, headers=headers
            ).apply_async()
        except Exception as exc:
            raise Reject(f"could not defer ({exc}); requeued", requeue=True) from exc
        raise Ignore()

    def dead_letter(
        self,
        reason: DeadLetterReason,
        *,
        exc: BaseException | None = None,
        detail: str | None = None,
        detector: str | None = None,
    ) -> NoReturn:
        """Store the message as a dead letter and quarantine it, in one transaction."""
        task, request, reliable = self.task, self.request, self.reliable
        claim = self.claim
        message = FailedMessage(
            message_id=self.message_id,
            task_id=request.id,
            task_name=task.name,
            handler_key=claim.handler_key if claim else None,
            args=list(self.args),
            kwargs=dict(self.kwargs),
            headers=dict(request.headers or {}),
            delivery_info=_plain(request.delivery_info),
            attempts=claim.attempts if claim else 0,
            first_seen_at=reliable.store.first_seen_at(self.message_id) if claim else None,
            hostname=request.hostname,
        )
        error = f"dead-lettered: {reason.value}: {detail or exc}"
        try:
            with reliable.database.engine.begin() as conn:
                if claim is not None:
                    reliable.inbox.quarantine(claim, error, connection=conn)
                entry_id = reliable.dead_letters.add(
                    message, reason, exc=exc, detail=detail, detector=detector, connection=conn
                )
        except LostOwnership:
            logger.warning("message %s: another delivery took it over", self.message_id)
            raise Ignore() from None
        except DBAPIError as store_error:
            self.defer(
                claim.version if claim else None,
                reason=f"store unavailable while dead-lettering: {store_error}",
            )
        try:
            reliable.dead_letters.check_alert()
        except Exception:
            logger.warning("dead-letter alert check failed", exc_info=True)
        meta = {
            "dead_letter_id": entry_id,
            "reason": reason.value,
            "detector": detector,
            "exc_type": type(exc).__name__ if exc is not None else None,
            "exc_message": str(exc) if exc is not None else detail,
        }
        self.outcome = "dead_lettered"
        self.announce(DEAD_LETTERED, meta)
        raise Ignore()

    def end_quarantined(self, claim: Claim) -> NoReturn:
        """Another copy of a message that was already dead-lettered: it stays dead."""
        logger.warning(
            "message %s (%s) is quarantined; this copy is not run",
            self.message_id,
            claim.handler_key,
        )
        self.outcome = "dead_lettered"
        self.announce(DEAD_LETTERED, {"reason": "already dead-lettered", "dead_letter_id": None})
        raise Ignore()

    def announce(self, state: str, meta: Any, **event_fields: Any) -> None:
        """Set the custom state in the result backend and tell Flower (a task-<state> event).

        The task then ends with Ignore, which sends no task-succeeded/failed event that
        would override the state in Flower.
        """
        task, request = self.task, self.request
        announce(
            task.backend,
            request.id,
            state,
            meta,
            send_event=task.send_event,
            store=not request.ignore_result,
            request=request,
            event_fields=event_fields,
        )


def _plain(delivery_info: Any) -> dict[str, Any]:
    """The JSON-safe part of Celery's delivery_info."""
    info = dict(delivery_info or {})
    return {k: v for k, v in info.items() if isinstance(v, (str, int, float, bool, type(None)))}
