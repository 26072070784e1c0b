"""Performing a decision: each way a delivery ends, as an exception for the caller to raise.

Every method returns the exception that ends the delivery (``DeadLettered``, ``Ignore``,
Celery's ``Retry``, ``Reject(requeue=True)`` when the message could not be handed on, or
the body's own exception) and the pipeline raises it where the reader sees it: ``raise
outcomes.deferred(run, ...)``. The order inside each is the guarantee: a copy is published
(or a dead letter committed) before this delivery ends and is acknowledged, so at every
moment the message exists somewhere. A duplicate is the one ending that is not an
exception: :meth:`Outcomes.duplicate` returns the first run's result for Celery to store.

The ends a caller waits for are Celery's own, so ``.get()``, errbacks, chains and chords
work as on plain Celery: a dead letter is a ``FAILURE`` whose exception is
``DeadLettered``, a duplicate a ``SUCCESS`` with the original result. Flower still shows
``DEAD_LETTERED`` / ``DUPLICATE``: each also sends its ``task-<state>`` event, which
:mod:`celery_reliable.flower.events` ranks above Celery's.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import Any, Protocol

from celery.exceptions import Ignore, Reject, Retry
from sqlalchemy import Connection
from sqlalchemy.exc import DataError

from celery_reliable.dead_lettered import DeadLettered
from celery_reliable.dead_letters.fitting import exception_name
from celery_reliable.dead_letters.types import DeadLetterReason, FailedMessage
from celery_reliable.exceptions import LostOwnership, StoreUnavailable
from celery_reliable.inbox import Inbox
from celery_reliable.message import (
    DEFERRALS_HEADER,
    REDELIVERED_HEADER,
    RESUMES_HEADER,
    RESUMES_UNRUN_HEADER,
    SENT_AT_HEADER,
    redelivered,
)
from celery_reliable.outbox import Outbox
from celery_reliable.settings import Settings
from celery_reliable.states import DEAD_LETTERED, DUPLICATE, announce
from celery_reliable.store.base import InboxStore
from celery_reliable.store.database import Database

from .decide import Action, Decision
from .guard import InfrastructureFailure, guarded, site
from .run import Outcome, Run

logger = logging.getLogger(__name__)

_MAX_DEFER_DELAY = 60.0

#: The stored result of a run that ended by ``replace()``: its replacement has the result.
REPLACED = {"celery_reliable": "replaced"}

RECORD_FAILURE = site("inbox.fail", "write the run's failure on its claim")
PUBLISH_RETRY = site("publish.retry", "publish the retry (broker, or the outbox when long)")
PUBLISH_DEFER = site("publish.defer", "publish the deferred copy")
DEAD_LETTER = site("dead_letter.write", "read first_seen_at, store the entry and quarantine")


class DeadLetterSink(Protocol):
    """What the pipeline uses of ``reliable.dead_letters``."""

    def add(
        self,
        message: FailedMessage,
        reason: DeadLetterReason,
        *,
        exc: BaseException | None = None,
        detail: str | None = None,
        detector: str | None = None,
        connection: Connection | None = None,
    ) -> int: ...

    def check_alert(self) -> bool: ...


def count_header(value: object) -> int:
    """A non-negative count from a header a sender could have set to anything."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


class Outcomes:
    """Ends deliveries: publishes copies and retries, stores dead letters, announces states."""

    def __init__(
        self,
        *,
        inbox: Inbox,
        store: InboxStore,
        database: Database,
        outbox: Outbox,
        dead_letters: DeadLetterSink,
        settings: Settings,
    ) -> None:
        self.inbox = inbox
        self.store = store
        self.database = database
        self.outbox = outbox
        self.dead_letters = dead_letters
        self.settings = settings

    def perform(self, run: Run, decision: Decision, exc: Exception | None = None) -> BaseException:
        """The exception that ends ``run`` as ``decision`` says (``exc``: what the run raised).

        Should one of our own calls fail while the ending is performed (a guarded site that
        raises instead of handling its failure), the message is deferred, never failed and
        acknowledged: its copy comes back to the same decision.
        """
        try:
            return self._perform(run, decision, exc)
        except InfrastructureFailure as failure:
            return self.deferred(run, None, reason=str(failure))

    def _perform(self, run: Run, decision: Decision, exc: Exception | None) -> BaseException:
        if decision.record_failure:
            assert exc is not None
            self.record_failure(run, exc)
        action = decision.action
        if action is Action.DEFER:
            return self.deferred(
                run,
                decision.resumes_version,
                reason=decision.note,
                delay=decision.delay,
                unrun=decision.unrun,
            )
        if action is Action.RETRY:
            assert decision.delay is not None
            return self.retried(run, decision.delay, reason=decision.note, exc=exc)
        if action is Action.DEAD_LETTER:
            assert decision.reason is not None
            return self.dead_lettered(
                run, decision.reason, exc=exc, detail=decision.detail, detector=decision.detector
            )
        if action is Action.QUARANTINED:
            return self.quarantined(run)
        if action is Action.LOST:
            return self.lost(run)
        # RUN ends nothing; DUPLICATE ends with a result, not an exception (``duplicate``).
        assert action in (Action.REQUEUE, Action.PASS), action
        assert exc is not None
        return exc  # raised as it is: Celery (or the broker) handles it

    def record_failure(self, run: Run, exc: BaseException) -> None:
        """Write the failure on the claim, so the next copy may claim at once."""
        if run.claim is None:
            return
        try:
            with guarded(RECORD_FAILURE):
                self.inbox.fail(run.claim, f"{type(exc).__name__}: {exc}")
        except Exception:  # never mask the task's own exception
            logger.warning("could not record the failure of %s", run.message_id, exc_info=True)

    def retried(
        self, run: Run, delay: float, *, reason: str, exc: BaseException | None = None
    ) -> BaseException:
        """Publish this message again after ``delay`` seconds, then end in state RETRY.

        Short delays wait on the broker (Celery's countdown). Longer ones wait in the
        store, from where the relay publishes them when due: a Redis queue would hand an
        unacknowledged countdown message to another worker after its visibility timeout.
        Run eagerly (``apply()``), the Retry carries the copy and Celery's ``apply`` runs it
        at once, as it does for an eager ``self.retry()``: no delay, no broker.
        """
        run.outcome = Outcome.RETRY
        request = run.request
        headers = {**(request.headers or {}), SENT_AT_HEADER: time.time() + delay}
        signature = run.task.signature_from_request(
            request, run.args, run.kwargs, retries=(request.retries or 0) + 1, headers=headers
        )
        if run.eager:
            return _retry(reason, exc, delay, eager_copy=signature)
        try:
            with guarded(PUBLISH_RETRY):
                if delay <= self.settings.retry_max_broker_delay.total_seconds():
                    signature.apply_async(countdown=delay)
                else:
                    with self.database.engine.begin() as conn:
                        self.outbox.enqueue(conn, signature, countdown=delay)
        except Exception as publish_error:
            return _caused_by(
                Reject(f"could not schedule the retry ({publish_error}); requeued", requeue=True),
                publish_error,
            )
        logger.info("message %s retried in %.1fs: %s", run.message_id, delay, reason)
        return _retry(reason, exc, delay)

    def deferred(
        self,
        run: Run,
        abandoned_version: int | None,
        *,
        reason: str,
        delay: float | None = None,
        unrun: bool = False,
    ) -> BaseException:
        """Publish this message again later (same id), then end this delivery.

        For waits that are nobody's failure: a live delivery holds the claim, or the store
        is unreachable. The copy is published before this delivery is acknowledged, so at
        every moment one of them is on the broker. If publishing fails too, the delivery is
        requeued.
        """
        run.outcome = Outcome.DEFERRED
        request = run.request
        if run.eager:  # no broker to come back through: say why instead of recursing
            return StoreUnavailable(f"message {request.id} cannot run now ({reason})")
        headers = dict(request.headers or {})
        deferrals = count_header(headers.get(DEFERRALS_HEADER)) + 1
        headers[DEFERRALS_HEADER] = deferrals
        if abandoned_version is not None:
            headers[RESUMES_HEADER] = abandoned_version
        if redelivered(request.delivery_info, headers):  # the flag is not published again
            headers[REDELIVERED_HEADER] = True
        if unrun:  # the abandoned claim never ran the body: resuming it is the same attempt
            headers[RESUMES_UNRUN_HEADER] = True
        else:
            headers.pop(RESUMES_UNRUN_HEADER, None)
        seconds = (
            delay if delay is not None else min(_MAX_DEFER_DELAY, 0.5 * 2 ** min(deferrals, 8))
        )
        headers[SENT_AT_HEADER] = time.time() + seconds
        # Waiting for a live delivery is routine; losing the store is not.
        level = logging.INFO if delay is not None else logging.WARNING
        logger.log(level, "message %s deferred %.1fs: %s", request.id, seconds, reason)
        try:
            with guarded(PUBLISH_DEFER):
                run.task.signature_from_request(
                    request, countdown=seconds, headers=headers
                ).apply_async()
        except Exception as exc:
            return _caused_by(Reject(f"could not defer ({exc}); requeued", requeue=True), exc)
        return _ignored()

    def dead_lettered(
        self,
        run: Run,
        reason: DeadLetterReason,
        *,
        exc: BaseException | None = None,
        detail: str | None = None,
        detector: str | None = None,
    ) -> BaseException:
        """Store the message as a dead letter and quarantine it, in one transaction."""
        request, claim = run.request, run.claim
        try:
            with guarded(DEAD_LETTER):
                first_seen = self.store.first_seen_at(run.message_id) if claim else None
        except InfrastructureFailure as store_error:
            return self._dead_letter_deferred(run, store_error)
        message = FailedMessage(
            message_id=run.message_id,
            task_id=request.id,
            task_name=run.task.name,
            handler_key=claim.handler_key if claim else None,
            args=list(run.args),
            kwargs=dict(run.kwargs),
            headers=dict(request.headers or {}),
            delivery_info=_plain(request.delivery_info),
            attempts=claim.attempts if claim else 0,
            first_seen_at=first_seen,
            hostname=request.hostname,
        )
        try:
            try:
                dead = self._store_dead_letter(run, message, reason, exc, detail, detector)
            except DataError as refused:  # the message's values, not an outage: keep less
                logger.error("message %s: dead letter refused (%s)", run.message_id, refused)
                detail = f"{detail or ''} (stored without arguments and headers: {refused})"
                bare = replace(message, args=[], kwargs={}, headers={})
                dead = self._store_dead_letter(run, bare, reason, exc, detail, detector)
        except LostOwnership:
            logger.warning("message %s: another delivery took it over", run.message_id)
            return _caused_by(_ignored(), None)
        except (InfrastructureFailure, DataError) as store_error:
            return self._dead_letter_deferred(run, store_error)
        try:
            self.dead_letters.check_alert()
        except Exception:
            logger.warning("dead-letter alert check failed", exc_info=True)
        run.outcome = Outcome.DEAD_LETTERED
        logger.error(  # the run's last line of ours: what happened, and where it is kept
            "message %s (%s) dead-lettered as %s: entry %s: %s",
            run.message_id,
            run.task.name,
            reason.value,
            dead.entry_id,
            f"{exception_name(exc)}: {exc}" if exc is not None else detail,
        )
        _event(
            run,
            DEAD_LETTERED,
            dead_letter_id=dead.entry_id,
            reason=reason.value,
            detector=detector,
            exc_type=type(exc).__name__ if exc is not None else None,
            exc_message=str(exc) if exc is not None else detail,
        )
        return dead

    def _store_dead_letter(
        self,
        run: Run,
        message: FailedMessage,
        reason: DeadLetterReason,
        exc: BaseException | None,
        detail: str | None,
        detector: str | None,
    ) -> DeadLettered:
        """Commit the dead letter and the claim's quarantine together; what the run raises.

        The quarantined claim keeps that exception, so that a later copy of the message
        (the same task id applied again) fails with it too: the same reason, entry id and
        original exception (``quarantined``).
        """
        error = f"dead-lettered: {reason.value}: {detail or exc}"
        with guarded(DEAD_LETTER), self.database.engine.begin() as conn:
            entry_id = self.dead_letters.add(
                message, reason, exc=exc, detail=detail, detector=detector, connection=conn
            )
            dead = DeadLettered.of(reason.value, entry_id, exc, detail)
            if run.claim is not None:
                self.inbox.quarantine(run.claim, error, ending=dead.stored(), connection=conn)
            return dead

    def _dead_letter_deferred(self, run: Run, store_error: BaseException) -> BaseException:
        """The store failed while dead-lettering: defer, and let the copy resume the claim."""
        return self.deferred(
            run,
            run.claim.version if run.claim else None,
            reason=f"store unavailable while dead-lettering: {store_error}",
        )

    def quarantined(self, run: Run) -> BaseException:
        """Another copy of a message that was already dead-lettered: it stays dead.

        It fails with the exception the dead letter ended with, which the quarantine kept
        (its reason, entry id and original exception): a frozen signature applied again
        fails as it did the first time. A claim quarantined without it (an ending that is
        not JSON, or too large for the store) fails as a plain ``PoisonMessage``.
        """
        claim = run.claim
        assert claim is not None
        logger.warning(
            "message %s (%s) is quarantined; this copy is not run",
            run.message_id,
            claim.handler_key,
        )
        run.outcome = Outcome.DEAD_LETTERED
        detail = "a copy of a message already dead-lettered"
        dead = DeadLettered.restored(self.inbox.decode_result(claim.result))
        if dead is None:
            dead = DeadLettered.of(DeadLetterReason.POISON_MESSAGE.value, None, None, detail)
        _event(
            run,
            DEAD_LETTERED,
            dead_letter_id=dead.entry_id,
            reason=dead.reason,
            detail=detail,
        )
        return dead

    def duplicate(self, run: Run) -> Any:
        """Completed before: the first run's result, for Celery to store as this SUCCESS.

        Returned, not raised, so Celery goes on as after a run: a chain's next step, a
        chord part counted, ``link`` callbacks. Flower sees the ``task-duplicate`` event.
        A run that ended by ``replace()`` has no result of its own: its duplicate ends as
        the replaced run did, with ``Ignore`` (the replacement reports the result).
        """
        claim = run.claim
        assert claim is not None
        run.outcome = Outcome.DUPLICATE
        logger.info(
            "message %s (%s) already processed: skipped, returning its stored result",
            claim.message_id,
            claim.handler_key,
        )
        result = self.inbox.decode_result(claim.result)
        _event(run, DUPLICATE, message_id=claim.message_id, handler_key=claim.handler_key)
        if result == REPLACED:
            raise _ignored()
        return result

    def lost(self, run: Run) -> BaseException:
        """Another delivery took the claim over: its run finishes the message."""
        logger.warning(
            "message %s (%s): another delivery took it over",
            run.message_id,
            run.options.handler_key,
        )
        run.outcome = Outcome.LOST
        return _caused_by(_ignored(), None)


def _ignored() -> BaseException:
    """Celery's Ignore: the task ends without a state or event of Celery's own."""
    ignore: BaseException = Ignore()
    return ignore


def _retry(
    reason: str, exc: BaseException | None, delay: float, *, eager_copy: Any = None
) -> BaseException:
    """Celery's Retry: the task ends in state RETRY (its copy is already on its way, or is
    ``eager_copy``, which an eager ``apply()`` runs next)."""
    eager = eager_copy is not None
    retry: BaseException = Retry(reason, exc=exc, when=delay, is_eager=eager, sig=eager_copy)
    return retry


def _caused_by(exc: BaseException, cause: BaseException | None) -> BaseException:
    """``exc`` as ``raise exc from cause`` would raise it (``None``: hide the context)."""
    exc.__cause__ = cause
    exc.__suppress_context__ = True
    return exc


def _event(run: Run, state: str, **fields: Any) -> None:
    """Tell Flower (a ``task-<state>`` event); the backend keeps Celery's own state."""
    task = run.task
    announce(task.backend, run.request.id, state, fields, send_event=task.send_event, store=False)


def _plain(delivery_info: Mapping[str, Any] | None) -> dict[str, Any]:
    """The JSON-safe part of Celery's delivery_info."""
    info = dict(delivery_info or {})
    return {k: v for k, v in info.items() if isinstance(v, (str, int, float, bool, type(None)))}
