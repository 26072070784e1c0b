"""``ReliableTask``: the pipeline around a task body.

claim → run the body → complete, where the completion mark commits in the same transaction
as the body's writes made through ``self.transaction()``. Outcomes that must not run the
body end the task without touching what another delivery owns:

- ``DUPLICATE`` state with the original result, when the message was already completed;
- a deferred copy (same message id, published with a delay), when a live delivery holds
  the claim or the store is unreachable: this copy may be the only one left, so it is
  never dropped;
- the failure lifecycle (``celery_reliable.lifecycle``) when the body raised, an open
  circuit breaker holds the message back, or the message is poison: a retry (state
  ``RETRY``) or a dead letter (state ``DEAD_LETTERED``).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, NoReturn

from celery import Task
from celery.exceptions import Ignore, Retry
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.orm import Session

from .classify import resolve
from .dead_letters import DeadLetterReason
from .exceptions import (
    ClaimUncertain,
    ConfigurationError,
    InvalidMessageId,
    LostOwnership,
    StoreUnavailable,
    TransactionMisuse,
)
from .extension import Reliable, handler_keys_of
from .inbox import Claim, Inbox, Outcome
from .lifecycle import Delivery
from .message import (
    MESSAGE_ID_HEADER,
    RESUMES_HEADER,
    RESUMES_UNRUN_HEADER,
    SENT_AT_HEADER,
    message_id_from,
    validate_message_id,
)
from .poison import PoisonDetector, TimespanDetector
from .retry import RetryPolicy
from .states import DUPLICATE

logger = logging.getLogger(__name__)


@dataclass
class _Run:
    """The state of one claimed run, kept on the task's request context."""

    claim: Claim
    transaction_entered: bool = False
    completed: bool = False


class ReliableTask(Task):  # type: ignore[misc]
    """A Celery task that runs once per message and commits its writes with that fact.

    Options (as ``@app.task`` keywords): ``handler_key`` (inbox identity, default the task
    name), ``legacy_handler_keys`` (old keys that still count as already done),
    ``retry_policy`` (a name in ``reliable.retry_policies`` or a RetryPolicy),
    ``circuit_breaker`` (a name configured with ``reliable.breakers.configure``),
    ``max_age`` and ``max_processing_time`` (timedeltas: poison when exceeded),
    ``transient_exceptions`` and ``poison_exceptions`` (classes or dotted paths).
    """

    acks_late = True
    reject_on_worker_lost = True
    handler_key: str | None = None
    legacy_handler_keys: tuple[str, ...] = ()
    retry_policy: str | RetryPolicy | None = None
    circuit_breaker: str | None = None
    max_age: timedelta | None = None
    max_processing_time: timedelta | None = None
    transient_exceptions: tuple[type[BaseException] | str, ...] = ()
    poison_exceptions: tuple[type[BaseException] | str, ...] = ()

    def resolved_transient_exceptions(self) -> tuple[type[BaseException], ...]:
        return resolve(self.transient_exceptions, f"task {self.name!r}: transient_exceptions")

    def resolved_poison_exceptions(self) -> tuple[type[BaseException], ...]:
        return resolve(self.poison_exceptions, f"task {self.name!r}: poison_exceptions")

    def own_detectors(self) -> list[PoisonDetector]:
        """The detectors this task's options ask for (``max_age``, ``max_processing_time``)."""
        if self.max_age is None and self.max_processing_time is None:
            return []
        return [TimespanDetector(self.max_age, self.max_processing_time)]

    def check_options(self) -> None:
        """Raise ConfigurationError naming this task when one of its options is invalid."""
        reliable = Reliable.of(self.app)
        reliable.retry_policies.resolve(self.retry_policy)
        self.resolved_transient_exceptions()
        self.resolved_poison_exceptions()
        try:
            self.own_detectors()
        except ConfigurationError as exc:
            raise ConfigurationError(f"task {self.name!r}: {exc}") from None
        if self.circuit_breaker is not None and self.circuit_breaker not in reliable.breakers:
            raise ConfigurationError(
                f"task {self.name!r}: circuit breaker {self.circuit_breaker!r} is not "
                f"configured; call reliable.breakers.configure({self.circuit_breaker!r}, ...)"
            )

    def apply_async(self, args: Any = None, kwargs: Any = None, *a: Any, **options: Any) -> Any:
        """Publish, refusing a bad ``reliable_message_id`` header before anything is sent."""
        headers = options.get("headers") or {}
        if MESSAGE_ID_HEADER in headers:
            validate_message_id(headers[MESSAGE_ID_HEADER], source=f"header {MESSAGE_ID_HEADER!r}")
        if SENT_AT_HEADER not in headers:  # where the lag metrics start
            options["headers"] = {**headers, SENT_AT_HEADER: time.time()}
        return super().apply_async(args, kwargs, *a, **options)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        request = self.request_stack.top
        if request is None or request.id is None:  # called as a function, not a message
            return super().__call__(*args, **kwargs)
        return self._run_reliably(request, args, kwargs)

    @property
    def message_id(self) -> str | None:
        """The current run's message id; None when the task is called as a plain function.

        Pass it as the idempotency key of calls to outside services (a payment provider, a
        mailer): a redelivery that runs again after a crash then repeats the same request
        instead of making a second one.
        """
        if self.request.id is None:
            return None
        return message_id_from(self.request.id, self.request.headers or {})

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A Session on the reliable store whose commit carries the inbox completion mark.

        Enter it once per run. Its commit at the end of the ``with`` block is the moment the
        message counts as processed: the writes and the mark are both there, or neither.
        Called outside a worker (the task called as a plain function) it is an ordinary
        unit of work on the store.
        """
        reliable = Reliable.of(self.app)
        run: _Run | None = getattr(self.request, "reliable_run", None)
        if run is None:
            if self.request.id is not None:
                raise TransactionMisuse("self.transaction() is for the task's own run only")
            with Session(reliable.database.engine) as session, session.begin():
                yield session
            return
        if run.transaction_entered:
            raise TransactionMisuse(
                "self.transaction() was entered twice in one run; its commit is the completion "
                "mark, so put all of the run's writes in one block"
            )
        run.transaction_entered = True
        try:
            with Session(reliable.database.engine) as session, session.begin():
                yield session
                session.flush()
                reliable.inbox.complete(run.claim, connection=session.connection())
        except (OperationalError, InterfaceError) as exc:
            raise StoreUnavailable(f"store failed during the task's transaction: {exc}") from exc
        run.completed = True

    # -- the pipeline -------------------------------------------------------------------

    def _run_reliably(self, request: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        reliable = Reliable.of(self.app)
        reliable.check()
        headers = request.headers or {}
        try:
            message_id = message_id_from(request.id, headers)
        except InvalidMessageId as exc:
            self._invalid_message_id(request, args, kwargs, exc)
        run = Delivery(self, request, args, kwargs, message_id)
        started = time.monotonic()
        reliable.metrics.record_start(self, headers)
        try:
            result = self._pipeline(reliable, run, request, args, kwargs)
            run.outcome = "completed"
            return result
        finally:
            reliable.metrics.record_delivery(self, run.outcome, time.monotonic() - started)

    def _invalid_message_id(
        self, request: Any, args: tuple[Any, ...], kwargs: dict[str, Any], exc: InvalidMessageId
    ) -> NoReturn:
        """Dead-letter a delivery whose ``reliable_message_id`` header or task id is invalid.

        Without a valid message id the inbox cannot claim it, and failing the task would
        leave nothing behind. It is kept under its task id (or ``unknown``), as
        ``ValidationFailed``: a sender's mistake, replayable once the header is fixed with a
        ``transform``.
        """
        task_id = request.id
        fallback = task_id if isinstance(task_id, str) and task_id.strip() else "unknown"
        Delivery(self, request, args, kwargs, fallback).dead_letter(
            DeadLetterReason.VALIDATION_FAILED, exc=exc, detector="message-id"
        )

    def _pipeline(
        self,
        reliable: Reliable,
        run: Delivery,
        request: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        inbox = reliable.inbox
        headers = request.headers or {}
        keys = handler_keys_of(self)
        message_id = run.message_id
        admission = None
        if self.circuit_breaker is not None:
            admission = reliable.breakers.admit(self.circuit_breaker)
            if not admission.allowed and reliable.breakers.on_open(self.circuit_breaker) == "delay":
                # Not claimed, so no attempt is spent: the message only waits.
                run.retry_later(
                    admission.retry_after, reason=f"circuit breaker {self.circuit_breaker!r} open"
                )
        try:
            claim = inbox.claim(
                message_id,
                keys[0],
                task_name=self.name,
                owner=f"{request.hostname or socket.gethostname()}:{os.getpid()}",
                redelivered=bool((request.delivery_info or {}).get("redelivered")),
                legacy_keys=keys[1:],
                resumes_version=headers.get(RESUMES_HEADER),
                resumes_unrun=headers.get(RESUMES_UNRUN_HEADER) is True,
            )
        except ClaimUncertain as exc:  # the claim may have committed: its copy may resume it
            run.defer(exc.version, reason=str(exc), unrun=True)
        except DBAPIError as exc:
            run.defer(None, reason=f"store unavailable while claiming: {exc}")
        if claim.outcome is Outcome.DUPLICATE:
            self._finish_duplicate(run, inbox, claim)
        if claim.outcome is Outcome.IN_FLIGHT:
            run.defer(None, reason="in flight elsewhere", delay=claim.retry_in)
        if claim.outcome is Outcome.POISONED:
            run.end_quarantined(claim)
        run.claim = claim
        if claim.outcome is Outcome.EXHAUSTED:
            reliable.metrics.inbox_poisoned.add(1, {"task": self.name})
            run.dead_letter(
                DeadLetterReason.POISON_MESSAGE,
                detail=f"used up reliable_max_attempts ({claim.attempts} runs): it keeps "
                "failing or killing its worker",
                detector="max-attempts",
            )
        if admission is not None and not admission.allowed:  # on_open="dead_letter"
            run.dead_letter(
                DeadLetterReason.CIRCUIT_BREAKER_OPEN,
                detail=f"circuit breaker {self.circuit_breaker!r} is open",
                detector="circuit-breaker",
            )
        if claim.attempts > 1:
            run.judge_before_running()
        state = _Run(claim)
        request.reliable_run = state
        try:
            result = self.run(*args, **kwargs)
            if state.completed:
                inbox.save_result(claim, result)
            else:
                inbox.complete(claim, result)
        except LostOwnership:
            logger.warning("message %s (%s): another delivery took it over", message_id, keys[0])
            run.outcome = "lost"
            raise Ignore() from None
        except (StoreUnavailable, OperationalError, InterfaceError) as exc:
            if state.completed:
                raise  # the effects are committed; only the result was not saved
            run.record_failure(exc)
            run.defer(claim.version, reason=str(exc))
        except (Retry, Ignore) as exc:  # the body's own retry() or Ignore: its decision
            if not state.completed:
                run.record_failure(exc)
            raise
        except Exception as exc:
            if state.completed:
                raise
            if admission is not None:
                reliable.breakers.record_failure(admission.name, exc, admission)
            run.failed(exc)
        if admission is not None:
            reliable.breakers.record_success(admission.name, admission)
        return result

    def _finish_duplicate(self, run: Delivery, inbox: Inbox, claim: Claim) -> NoReturn:
        run.outcome = "duplicate"
        logger.info(
            "message %s (%s) already processed: skipped", claim.message_id, claim.handler_key
        )
        run.announce(
            DUPLICATE,
            inbox.decode_result(claim.result),
            message_id=claim.message_id,
            handler_key=claim.handler_key,
        )
        raise Ignore()
