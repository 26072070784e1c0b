"""The delivery pipeline: claim → run the body → complete, and every other ending.

The completion mark, with the body's result, commits when the body returns, in the same
transaction as the writes it made through ``self.transaction()``: the block's exit only
flushes them, so a body that raises after the block commits nothing. Deliveries that
must not run the body end without touching what another delivery owns:

- the original result, returned as this run's (Celery's ``SUCCESS``), when the message was
  already completed;
- a deferred copy (same message id, published with a delay), when a live delivery holds
  the claim or the store is unreachable: this copy may be the only one left, so it is
  never dropped;
- the failure lifecycle when the body raised, an open circuit breaker holds the message
  back, or the message is poison: a retry (state ``RETRY``) or a dead letter (Celery's
  ``FAILURE`` with a ``DeadLettered`` exception).

What happens is decided in :mod:`.decide` and performed by :mod:`.outcomes`; this module
only sequences the steps. Its collaborators are handed in by ``Reliable`` (the extension
builds one pipeline per app), never looked up.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy.orm import Session

from celery_reliable.classify import Classifier
from celery_reliable.clock import utcnow
from celery_reliable.dead_letters.types import DeadLetterReason
from celery_reliable.exceptions import (
    ClaimUncertain,
    InvalidMessageId,
    TransactionMisuse,
)
from celery_reliable.inbox import Claim, Inbox
from celery_reliable.inbox import Outcome as Claimed
from celery_reliable.message import (
    RESUMES_HEADER,
    RESUMES_UNRUN_HEADER,
    message_id_from,
    redelivered,
)
from celery_reliable.outbox import Outbox
from celery_reliable.poison import FailureContext, PoisonDetector, Verdict, judge
from celery_reliable.settings import Settings
from celery_reliable.store.base import InboxStore
from celery_reliable.store.database import Database

from .decide import Action, dead_letter, decide_claim, decide_failure, failure_of, judged
from .guard import InfrastructureFailure, guarded, site
from .lease import LeaseKeeper
from .options import TaskOptions
from .outcomes import REPLACED, DeadLetterSink, Outcomes
from .run import Outcome, PendingTransaction, Run

logger = logging.getLogger(__name__)

BREAKER_ADMIT = site("breaker.admit", "ask the task's circuit breaker before claiming")
BREAKER_RECORD = site("breaker.record", "report the run's success or failure to the breaker")
CLAIM = site("inbox.claim", "claim the message in the inbox")
FIRST_SEEN = site("detectors.first_seen", "read when the message was first seen, for detectors")
COMPLETE = site("inbox.complete", "commit the completion mark alone (no self.transaction())")
COMMIT = site("transaction.commit", "flush self.transaction()'s writes; commit them with the mark")

if TYPE_CHECKING:
    from celery_reliable.breakers import Admission, Breakers


class DeliveryMetrics(Protocol):
    """What the pipeline records in ``reliable.metrics``."""

    inbox_poisoned: Any

    def record_start(self, task: Any, headers: Mapping[str, Any]) -> None: ...

    def record_delivery(self, task: Any, outcome: str, seconds: float) -> None: ...


class Pipeline:
    """Delivers messages to the ReliableTasks of one app."""

    def __init__(
        self,
        *,
        inbox: Inbox,
        store: InboxStore,
        database: Database,
        outbox: Outbox,
        dead_letters: DeadLetterSink,
        breakers: Breakers,
        classifier: Classifier,
        poison_detectors: Sequence[PoisonDetector],
        metrics: DeliveryMetrics,
        settings: Settings,
    ) -> None:
        self.inbox = inbox
        self.store = store
        self.database = database
        self.breakers = breakers
        self.classifier = classifier
        #: ``reliable.add_poison_detector`` appends here, so detectors added later count.
        self.poison_detectors = poison_detectors
        self.metrics = metrics
        self.settings = settings
        self.leases = LeaseKeeper(store, settings.stuck_threshold)
        self.outcomes = Outcomes(
            inbox=inbox,
            store=store,
            database=database,
            outbox=outbox,
            dead_letters=dead_letters,
            settings=settings,
        )

    def deliver(
        self,
        task: Any,
        options: TaskOptions,
        request: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        """Run ``task``'s body for the message of ``request`` at most once, or end otherwise."""
        try:
            message_id = message_id_from(
                request.id,
                request.headers or {},
                replaced_nesting=getattr(request, "replaced_task_nesting", 0),
            )
        except InvalidMessageId as exc:
            ending = self._invalid_message_id(
                Run(task, options, request, args, kwargs, _fallback_id(request.id)), exc
            )
        else:
            return self._measured(Run(task, options, request, args, kwargs, message_id))
        raise ending

    def _measured(self, run: Run) -> Any:
        """The delivery, with its start lag, outcome and duration recorded."""
        task = run.task
        headers = run.request.headers or {}
        started = time.monotonic()
        self.metrics.record_start(task, headers)
        try:
            return self._run(run)
        finally:
            self.metrics.record_delivery(task, run.outcome.value, time.monotonic() - started)

    def _invalid_message_id(self, run: Run, exc: InvalidMessageId) -> BaseException:
        """Dead-letter a delivery whose ``reliable_message_id`` header or task id is invalid.

        Without a valid message id the inbox cannot claim it, and failing the task would
        leave nothing behind. It is kept under its task id (or ``unknown``), as
        ``ValidationFailed``: a sender's mistake, replayable once the header is fixed with a
        ``transform``.
        """
        decision = dead_letter(DeadLetterReason.VALIDATION_FAILED, detector="message-id")
        return self.outcomes.perform(run, decision, exc)

    def _run(self, run: Run) -> Any:
        """Breaker → claim → what the claim allows → body → completion mark."""
        admission = self._admit(run)
        claim = run.claim = self._claim(run)
        if claim.outcome is Claimed.EXHAUSTED:
            self.metrics.inbox_poisoned.add(1, {"task": run.task.name})
        held_back = admission is not None and not admission.allowed  # on_open="dead_letter"
        decision = decide_claim(
            claim, open_breaker=run.options.circuit_breaker if held_back else None
        )
        if decision.action is Action.DUPLICATE:
            return self.outcomes.duplicate(run)
        if decision.action is not Action.RUN:
            raise self.outcomes.perform(run, decision)
        if claim.attempts > 1:  # a message that comes back may have become poison meanwhile
            try:
                verdict = self._judge(run, None)
            except InfrastructureFailure as exc:  # the body has not run: resume this claim
                raise self.outcomes.deferred(
                    run, claim.version, reason=str(exc), unrun=True
                ) from exc
            if verdict is not None:
                raise self.outcomes.perform(run, judged(verdict))
        run.request.reliable_run = run
        try:
            with self.leases.kept(claim):  # until the commit is done, not only the body
                try:
                    result = run.task.run(*run.args, **run.kwargs)
                    self._complete(run, result)
                finally:  # whatever ended the run: writes never commit without the mark
                    run.discard_transaction()
        except Exception as exc:
            ending = self._failed(run, exc, admission)  # may be exc itself: raised as it is
        else:
            if admission is not None:
                self._record_breaker(admission, None)
            run.outcome = Outcome.COMPLETED
            return result
        raise ending

    def _complete(self, run: Run, result: Any) -> None:
        """Commit the completion mark with ``result``: with the writes of
        ``self.transaction()`` in one commit when the body used it, else on its own.

        The result is encoded before anything commits; one that cannot be encoded is
        logged and not stored, and the run completes all the same.
        """
        claim = run.claim
        assert claim is not None
        pending = run.transaction
        if pending is None:
            with guarded(COMPLETE):
                self.inbox.complete(claim, result)
        else:
            with guarded(COMMIT, with_body=True):  # a failure is a StoreUnavailable: deferred
                pending.commit(
                    lambda connection: self.inbox.complete(claim, result, connection=connection)
                )
        run.completed = True

    def _record_breaker(self, admission: Admission, exc: Exception | None) -> None:
        """Tell the breaker how the run went; never changes how the delivery ends."""
        try:
            with guarded(BREAKER_RECORD):
                if exc is None:
                    self.breakers.record_success(admission.name, admission)
                else:
                    self.breakers.record_failure(admission.name, exc, admission)
        except InfrastructureFailure as failure:
            logger.warning("circuit breaker %s not updated: %s", admission.name, failure)

    def _admit(self, run: Run) -> Admission | None:
        """Ask the task's circuit breaker; an open one with ``on_open="delay"`` ends here."""
        name = run.options.circuit_breaker
        if name is None:
            return None
        try:
            with guarded(BREAKER_ADMIT):
                admission = self.breakers.admit(name)
        except InfrastructureFailure as exc:  # not claimed: the copy is the same attempt
            raise self.outcomes.deferred(run, None, reason=str(exc)) from exc
        if not admission.allowed and self.breakers.on_open(name) == "delay":
            # Not claimed, so no attempt is spent: the message only waits.
            raise self.outcomes.retried(
                run, admission.retry_after, reason=f"circuit breaker {name!r} open"
            )
        return admission

    def _claim(self, run: Run) -> Claim:
        request, options = run.request, run.options
        headers = request.headers or {}
        try:
            with guarded(CLAIM):
                return self.inbox.claim(
                    run.message_id,
                    options.handler_key,
                    task_name=run.task.name,
                    owner=f"{request.hostname or socket.gethostname()}:{os.getpid()}",
                    redelivered=redelivered(request.delivery_info, headers),
                    legacy_keys=options.legacy_keys,
                    resumes_version=headers.get(RESUMES_HEADER),
                    resumes_unrun=headers.get(RESUMES_UNRUN_HEADER) is True,
                )
        except ClaimUncertain as exc:  # the claim may have committed: its copy may resume it
            ending = self.outcomes.deferred(run, exc.version, reason=str(exc), unrun=True)
        except InfrastructureFailure as exc:
            ending = self.outcomes.deferred(
                run, None, reason=f"store unavailable while claiming: {exc}"
            )
        raise ending

    def _failed(self, run: Run, exc: Exception, admission: Admission | None) -> BaseException:
        """The exception that ends a run whose body (or completion) raised ``exc``."""
        claim = run.claim
        assert claim is not None
        failure = failure_of(
            exc, classifier=self.classifier, options=run.options, gave_up=run.gave_up_retrying
        )
        consulted = not run.completed and failure.cause.consults_detectors
        if admission is not None and not run.completed and failure.cause.is_body_error:
            self._record_breaker(admission, exc)
        verdict = None
        if consulted:
            try:
                verdict = self._judge(run, exc)
            except InfrastructureFailure as store_error:  # decided as the store's failure
                failure = failure_of(store_error, classifier=self.classifier, options=run.options)
        decision = decide_failure(
            failure,
            claim=claim,
            committed=run.completed,
            verdict=verdict,
            policy=run.options.retry_policy,
            explicit_policy=run.options.explicit_policy,
        )
        return self.outcomes.perform(run, decision, exc)

    def _judge(self, run: Run, exc: BaseException | None) -> Verdict | None:
        """The detectors' verdict on this run (``exc`` None: before the body runs)."""
        detectors = [*run.options.detectors, *self.poison_detectors]
        if not detectors:
            return None
        claim = run.claim
        assert claim is not None
        first_seen = None
        if run.options.needs_first_seen or self.poison_detectors:
            with guarded(FIRST_SEEN):
                first_seen = self.store.first_seen_at(run.message_id)
        return judge(
            detectors,
            FailureContext(
                task_name=run.task.name,
                handler_key=claim.handler_key,
                message_id=run.message_id,
                attempts=claim.attempts,
                exception=exc,
                first_seen_at=first_seen,
                run_started_at=run.started_at,
                now=utcnow(),
                args=run.args,
                kwargs=run.kwargs,
            ),
        )

    def replaced(self, run: Run) -> None:
        """The run ended by ``replace()``: its message is done, by its replacement.

        After a ``self.transaction()`` block its writes commit now, with this mark.
        """
        if not run.completed:
            self._complete(run, REPLACED)

    @contextmanager
    def transaction(self, request: Any) -> Iterator[Session]:
        """``ReliableTask.transaction()``: a Session whose commit carries the completion mark.

        The block's exit checks and flushes the writes; they commit when the body returns
        (:meth:`_complete`), so that the mark can carry the body's result and code after
        the block that fails leaves nothing committed. Outside a delivery (the task called
        as a plain function) it is an ordinary unit of work on the store.
        """
        run: Run | None = getattr(request, "reliable_run", None)
        if run is None:
            if request.id is not None:
                raise TransactionMisuse("self.transaction() is for the task's own run only")
            with Session(self.database.engine) as session, session.begin():
                yield session
            return
        if run.transaction_entered:
            raise TransactionMisuse(
                "self.transaction() was entered twice in one run; its commit is the completion "
                "mark, so put all of the run's writes in one block"
            )
        run.transaction_entered = True
        session = Session(self.database.engine)
        try:
            pending = PendingTransaction(session, session.begin())
            yield session  # what the body raises here ends the run as the body's failure
            pending.check()
            with guarded(COMMIT, with_body=True):  # a failure is a StoreUnavailable: deferred
                session.flush()
        except BaseException:
            session.close()  # rolls back
            raise
        run.transaction = pending  # committed or discarded by the pipeline (_run)


def _fallback_id(task_id: Any) -> str:
    """The id a delivery without a valid message id is dead-lettered under."""
    return task_id if isinstance(task_id, str) and task_id.strip() else "unknown"


@dataclass(frozen=True)
class Binding:
    """A task's resolved options and the pipeline that delivers its messages."""

    pipeline: Pipeline
    options: TaskOptions
