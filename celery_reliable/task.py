"""``ReliableTask``: the pipeline around a task body.

claim → run the body → complete, where the completion mark commits in the same transaction
as the body's writes made through ``self.transaction()``. Outcomes that must not run the
body end the task without touching what another delivery owns:

- ``DUPLICATE`` state with the original result, when the message was already completed;
- a deferred copy (same message id, published with a delay), when a live delivery holds
  the claim or the store is unreachable: this copy may be the only one left, so it is
  never dropped;
- ``MessagePoisoned``, when the message used up ``reliable_max_attempts``.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, NoReturn

from celery import Task
from celery.backends.base import DisabledBackend
from celery.exceptions import Ignore, Reject
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.orm import Session

from .exceptions import (
    LostOwnership,
    MessagePoisoned,
    ReliableError,
    StoreUnavailable,
    TransactionMisuse,
)
from .extension import Reliable, handler_keys_of
from .inbox import Claim, Inbox, Outcome
from .message import MESSAGE_ID_HEADER, message_id_from, validate_message_id
from .states import DUPLICATE

logger = logging.getLogger(__name__)

#: Header of a re-published copy: the claim version its run abandoned, and how many times.
RESUMES_HEADER = "reliable_resumes_version"
DEFERRALS_HEADER = "reliable_deferrals"
_MAX_DEFER_DELAY = 60.0


def _count(value: object) -> int:
    """A non-negative count from a header a sender could have set to anything."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


@dataclass
class _Run:
    """The state of one claimed run, kept on the task's request context."""

    claim: Claim
    transaction_entered: bool = False
    completed: bool = False


class ReliableTask(Task):  # type: ignore[misc]
    """A Celery task that runs once per message and commits its writes with that fact.

    Options (as ``@app.task`` keywords): ``handler_key`` (inbox identity, default the task
    name), ``legacy_handler_keys`` (old keys that still count as already done).
    """

    acks_late = True
    reject_on_worker_lost = True
    handler_key: str | None = None
    legacy_handler_keys: tuple[str, ...] = ()

    def apply_async(self, args: Any = None, kwargs: Any = None, *a: Any, **options: Any) -> Any:
        """Publish, refusing a bad ``reliable_message_id`` header before anything is sent."""
        headers = options.get("headers") or {}
        if MESSAGE_ID_HEADER in headers:
            validate_message_id(headers[MESSAGE_ID_HEADER], source=f"header {MESSAGE_ID_HEADER!r}")
        return super().apply_async(args, kwargs, *a, **options)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        request = self.request_stack.top
        if request is None or request.id is None:  # called as a function, not a message
            return super().__call__(*args, **kwargs)
        return self._run_reliably(request, args, kwargs)

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
        inbox = reliable.inbox
        headers = request.headers or {}
        keys = handler_keys_of(self)
        message_id = message_id_from(request.id, headers)
        try:
            claim = inbox.claim(
                message_id,
                keys[0],
                task_name=self.name,
                owner=f"{request.hostname or socket.gethostname()}:{os.getpid()}",
                redelivered=bool((request.delivery_info or {}).get("redelivered")),
                legacy_keys=keys[1:],
                resumes_version=headers.get(RESUMES_HEADER),
            )
        except DBAPIError as exc:
            self._defer(request, None, reason=f"store unavailable while claiming: {exc}")
        if claim.outcome is Outcome.DUPLICATE:
            self._finish_duplicate(request, inbox, claim)
        if claim.outcome is Outcome.IN_FLIGHT:
            self._defer(request, None, reason="in flight elsewhere", delay=claim.retry_in)
        if claim.outcome is Outcome.POISONED:
            raise MessagePoisoned(
                f"message {message_id!r} ({keys[0]}) is quarantined as poisoned after "
                f"{claim.attempts} attempts; it will not run again"
            )
        run = _Run(claim)
        request.reliable_run = run
        try:
            result = self.run(*args, **kwargs)
            if run.completed:
                inbox.save_result(claim, result)
            else:
                inbox.complete(claim, result)
        except LostOwnership:
            logger.warning("message %s (%s): another delivery took it over", message_id, keys[0])
            raise Ignore() from None
        except (StoreUnavailable, OperationalError, InterfaceError) as exc:
            if run.completed:
                raise  # the effects are committed; only the result was not saved
            self._record_failure(inbox, claim, exc)
            self._defer(request, claim.version, reason=str(exc))
        except Exception as exc:
            if not run.completed:
                self._record_failure(inbox, claim, exc)
            raise
        return result

    def _record_failure(self, inbox: Inbox, claim: Claim, exc: BaseException) -> None:
        try:
            inbox.fail(claim, f"{type(exc).__name__}: {exc}")
        except Exception:  # never mask the task's own exception
            logger.warning("could not record the failure of %s", claim.message_id, exc_info=True)

    def _finish_duplicate(self, request: Any, inbox: Inbox, claim: Claim) -> NoReturn:
        logger.info(
            "message %s (%s) already processed: skipped", claim.message_id, claim.handler_key
        )
        if not request.ignore_result and not isinstance(self.backend, DisabledBackend):
            self.update_state(request.id, DUPLICATE, inbox.decode_result(claim.result))
        raise Ignore()

    def _defer(
        self,
        request: Any,
        abandoned_version: int | None,
        *,
        reason: str,
        delay: timedelta | None = None,
    ) -> NoReturn:
        """Publish this message again later (same id), then end this delivery.

        The copy is published before this delivery is acknowledged, so at every moment one
        of them is on the broker. If publishing fails too, the delivery is requeued.
        """
        if request.is_eager:  # no broker to come back through: say why instead of recursing
            raise ReliableError(f"message {request.id} cannot run now ({reason})")
        headers = dict(request.headers or {})
        deferrals = _count(headers.get(DEFERRALS_HEADER)) + 1
        headers[DEFERRALS_HEADER] = deferrals
        if abandoned_version is not None:
            headers[RESUMES_HEADER] = abandoned_version
        seconds = (
            delay.total_seconds()
            if delay is not None
            else min(_MAX_DEFER_DELAY, 0.5 * 2 ** min(deferrals, 8))
        )
        # Waiting for a live delivery is routine; losing the store is not.
        level = logging.INFO if delay is not None else logging.WARNING
        logger.log(level, "message %s deferred %.1fs: %s", request.id, seconds, reason)
        try:
            self.signature_from_request(request, countdown=seconds, headers=headers).apply_async()
        except Exception as exc:
            raise Reject(f"could not defer ({exc}); requeued", requeue=True) from exc
        raise Ignore()
