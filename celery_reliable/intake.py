"""Dead letters for messages that never reach a task body; the worker keeps running.

Celery's consumer logs such a message and acknowledges or rejects it, and it is gone: a
task name the worker does not know (``on_unknown_task``), a message that is not a task at
all (``on_unknown_message``), a body whose content type is not in ``accept_content`` or
that is not a valid task (``on_invalid_task``), a body that does not decode
(``on_decode_error``), a message past its ``expires`` (``Request.revoked``, which marks it
REVOKED and acknowledges it). Here each is first stored in the dead-letter store, and
only then handed to Celery's own code, which acknowledges or rejects it. A crash in
between leaves the message on the broker: at worst a second dead letter, never a lost
message. If the store cannot be written the message is requeued instead, after a pause
(:data:`REQUEUE_DELAY`), and waits on the broker until the store is back.

Nothing is ever unpickled here: arguments are decoded only with the content types the
worker accepts, minus pickle (``celery_reliable.intake_messages`` reads a raw message).
Where Celery itself decoded them (an expired message, which it had accepted), they are
taken from its request.

Hooks, all in the worker's main process, installed by one consumer bootstep
(:class:`DeadLetterIntake`) when the consumer is built; it looks up the dead-letter store
once, when it starts, before any message is handled:

* the consumer instance's four handlers are replaced by wrappers. ``create_task_handler``
  binds ``on_unknown_message``/``on_unknown_task``/``on_invalid_task`` when the event loop
  starts (after every step is built); ``on_decode_error`` is looked up on each call, and
  the Tasks step hands it to the task consumer when it starts. The remote-control
  consumer gets ``on_decode_error`` too: its messages are passed straight through.
* expiry: every task's request class (``Task.Request``, Celery's documented extension
  point) gets a mixin whose ``revoked()`` stores the dead letter before Celery's own
  ``revoked()`` announces and acknowledges the message. That covers both places Celery
  expires a message: on receipt, and when it leaves the ETA timer or the pool's queue.
  The ``task_revoked`` signal would be too late: it is sent after the acknowledgement.
* invalid messages: each registered task's strategy is wrapped to check the message first
  (:func:`task_message_problem`), and the handler ``create_task_handler`` returns is
  wrapped too (:meth:`DeadLetterIntake._guard`), so that what Celery would fail on
  reaches ``on_invalid_task`` instead of stopping the consumer.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from functools import cache, partial
from typing import Any

from celery import bootsteps
from celery.backends.base import DisabledBackend
from celery.exceptions import InvalidTaskError, NotRegistered, TaskRevokedError
from celery.signals import task_revoked
from celery.states import FAILURE, REVOKED
from celery.utils.imports import symbol_by_name
from celery.worker.request import Request
from celery.worker.state import revoked as revoked_tasks
from celery.worker.state import task_ready
from sqlalchemy.exc import SQLAlchemyError

from .dead_lettered import DeadLettered
from .dead_letters import DeadLetterReason, DeadLetters, FailedMessage
from .intake_messages import failed_message, header_text, task_message_problem
from .states import DEAD_LETTERED, announce

logger = logging.getLogger(__name__)

#: Seconds a message whose dead letter could not be stored is held before it is requeued.
#: Requeued at once it would come straight back, and spin while the store is down.
REQUEUE_DELAY = 2.0
#: The intake step of each app's consumer, for the requests of that app.
_INTAKES: weakref.WeakKeyDictionary[Any, DeadLetterIntake] = weakref.WeakKeyDictionary()


def record(
    letters: DeadLetters,
    build: Callable[[], FailedMessage],
    reason: DeadLetterReason,
    *,
    exc: BaseException | None,
    detector: str,
    detail: str | None = None,
) -> int | None:
    """Store the dead letter; its entry id, or None when the store cannot be written.

    None means: requeue the message, it waits on the broker until the store is back. Any
    other error (a bug, a redactor that raises) propagates; the caller then lets Celery
    handle the message as it would without celery_reliable, rather than requeue it for
    ever.
    """
    entry = build()
    try:
        entry_id = letters.add(entry, reason, exc=exc, detail=detail, detector=detector)
    except SQLAlchemyError as error:
        # Not str(error): SQLAlchemy's includes the statement's parameters, the arguments.
        cause = str(getattr(error, "orig", None) or type(error).__name__).strip()
        logger.error(
            "message %s (%s) could not be dead-lettered as %s, the store is unavailable "
            "(%s): requeued in %.0fs, it waits on the broker",
            entry.message_id,
            entry.task_name,
            reason.value,
            cause.splitlines()[0] if cause else type(error).__name__,
            REQUEUE_DELAY,
        )
        return None
    try:
        letters.check_alert()
    except Exception:
        logger.warning("dead-letter alert check failed", exc_info=True)
    return entry_id


def _checked(strategy: Callable[..., Any], message: Any, body: Any, *args: Any) -> Any:
    """A task's strategy, refusing what :func:`task_message_problem` finds, as Celery does
    with an invalid task: its consumer then hands the message to ``on_invalid_task``."""
    problem = task_message_problem(message, body)
    if problem is not None:
        raise InvalidTaskError(f"invalid task message: {problem}")
    return strategy(message, body, *args)


def _store_final(
    backend: Any, task_id: str, state: str, exc: BaseException, request: Any = None
) -> None:
    """Store the ending a caller's ``.get()`` raises; a backend outage is logged only.

    The dead letter is committed by then, so a backend that cannot take the state must not
    make the message come back: its caller waits for the result backend, as with Celery.
    """
    if isinstance(backend, DisabledBackend):
        return
    try:
        backend.store_result(task_id, exc, state, request=request)
    except Exception:
        logger.warning("could not store state %s for %s", state, task_id, exc_info=True)


def _as_celery_reports(exc: BaseException | None) -> BaseException | None:
    """The exception plain Celery's caller gets: ``NotRegistered`` for an unknown task.

    Celery's consumer hands ``on_unknown_task`` the ``KeyError`` of its registry lookup and
    stores ``NotRegistered`` for the caller; the caller's ``.get()`` keeps raising that type.
    """
    if isinstance(exc, KeyError) and not isinstance(exc, NotRegistered):
        celerys: BaseException = NotRegistered(exc.args[0] if exc.args else "")
        return celerys
    return exc


def _meta(entry_id: int, reason: DeadLetterReason, detector: str) -> dict[str, Any]:
    return {"dead_letter_id": entry_id, "reason": reason.value, "detector": detector}


class DeadLetterIntake(bootsteps.StartStopStep):  # type: ignore[misc]
    """A consumer step that stores a message as a dead letter before Celery drops it."""

    label = "celery_reliable dead-letter intake"

    def __init__(self, consumer: Any, **kwargs: Any) -> None:
        """Wrap the consumer's handlers now: the Tasks step binds them when it starts."""
        self.consumer = consumer
        self._letters: DeadLetters | None = None  # set by start(), before any message
        self.accept_content: Any = None
        _INTAKES[consumer.app] = self
        for name, reason in (
            ("on_unknown_message", DeadLetterReason.HANDLER_NOT_FOUND),
            ("on_unknown_task", DeadLetterReason.HANDLER_NOT_FOUND),
            ("on_invalid_task", DeadLetterReason.DESERIALIZATION_FAILED),
        ):
            original = getattr(consumer, name)
            # (body, message[, exc]): the message is always the second argument.
            handler = partial(self._intercept, original, name, reason, 1)
            setattr(consumer, name, handler)
        consumer.on_decode_error = partial(
            self._intercept,
            consumer.on_decode_error,
            "on_decode_error",
            DeadLetterReason.DESERIALIZATION_FAILED,
            0,
        )
        update_strategies = consumer.update_strategies

        def with_expiry_dead_letters() -> None:
            for task in consumer.app.tasks.values():
                task.Request = _with_expiry(symbol_by_name(task.Request))
            update_strategies()
            strategies = consumer.strategies  # the task handler holds this very dict
            for name, strategy in list(strategies.items()):
                strategies[name] = partial(_checked, strategy)

        consumer.update_strategies = with_expiry_dead_letters
        create_task_handler = consumer.create_task_handler

        def guarded_task_handler(*args: Any, **kwargs: Any) -> Callable[[Any], Any]:
            return partial(self._guard, create_task_handler(*args, **kwargs))

        consumer.create_task_handler = guarded_task_handler
        super().__init__(consumer, **kwargs)

    def start(self, consumer: Any) -> None:
        """Take the dead-letter store and what raw messages are read with, once."""
        from .extension import Reliable  # the bootstep is where the extension is reached

        self._letters = Reliable.of(consumer.app).dead_letters
        self.accept_content = consumer.app.conf.accept_content

    @property
    def letters(self) -> DeadLetters:
        """The dead-letter store, as :meth:`start` took it."""
        if self._letters is None:
            raise RuntimeError("the dead-letter intake handled a message before it started")
        return self._letters

    def _guard(self, handle: Callable[[Any], Any], message: Any) -> Any:
        """Celery's task handler, with what it cannot handle dead-lettered instead of raised.

        An exception from Celery's handler escapes the consumer, which takes it for a lost
        connection: the message is restored and comes back for ever (the queue blocked
        behind it), or the worker exits. :func:`task_message_problem` catches the known
        cases for registered tasks; this catches the rest: a message Celery failed on is
        dead-lettered as ``DeserializationFailed`` and rejected, as an invalid task.
        A ``task`` header that is not a string names no task: Celery would fail on it
        (a list cannot be looked up), so it goes where a message without one goes.
        """
        consumer = self.consumer
        headers = message.headers
        if isinstance(headers, Mapping) and not isinstance(headers.get("task", ""), str):
            return consumer.on_unknown_message(None, message)
        try:
            return handle(message)
        except (*consumer.connection_errors, *consumer.channel_errors):
            raise  # the broker's trouble, not the message's: Celery reconnects
        except Exception as exc:
            if message.acknowledged:  # Celery settled it before it failed: nothing is lost
                logger.exception("Celery failed on a message it had settled")
                return None
            return consumer.on_invalid_task(None, message, exc)

    def _intercept(
        self,
        original: Callable[..., Any],
        detector: str,
        reason: DeadLetterReason,
        message_at: int,
        *args: Any,
    ) -> Any:
        consumer, message = self.consumer, args[message_at]
        task_consumer = getattr(consumer, "task_consumer", None)
        if getattr(message, "channel", None) is not getattr(task_consumer, "channel", None):
            return original(*args)  # the remote-control consumer's, not a task message
        exc = args[-1] if isinstance(args[-1], BaseException) else None
        build = partial(failed_message, message, self.accept_content, consumer.hostname)
        detail = None if exc else "not a Celery task message: it names no task"
        try:
            entry_id = record(
                self.letters, build, reason, exc=exc, detector=detector, detail=detail
            )
        except Exception:
            logger.exception("could not dead-letter a message; Celery's %s drops it", detector)
            return original(*args)
        if entry_id is None:
            self.requeue_later(message)
            return None
        try:
            result = original(*args)  # acknowledges or rejects: the dead letter is committed
        except Exception:
            # Celery's handler can fail on what it reports (an unknown task without an id):
            # the message is dead-lettered already, so it must not come back.
            logger.exception("Celery's %s failed on a dead-lettered message", detector)
            if not message.acknowledged:
                message.reject_log_error(logger, consumer.connection_errors)
            return None
        headers = message.headers if isinstance(message.headers, dict) else {}
        task_id = header_text(headers.get("id"))
        if task_id is not None:  # after Celery's handler, which may store FAILURE first
            if not headers.get("ignore_result"):
                _store_final(
                    consumer.app.backend,
                    task_id,
                    FAILURE,
                    DeadLettered.of(reason.value, entry_id, _as_celery_reports(exc), detail),
                )
            dispatcher = consumer.event_dispatcher
            announce(
                consumer.app.backend,
                task_id,
                DEAD_LETTERED,
                _meta(entry_id, reason, detector),
                send_event=partial(dispatcher.send, uuid=task_id) if dispatcher else None,
                store=False,
            )
        return result

    def requeue_later(self, message: Any) -> None:
        """Requeue ``message`` after :data:`REQUEUE_DELAY`, from the consumer's own loop.

        Until then it stays unacknowledged: if the worker dies meanwhile, the broker hands
        it out again anyway.
        """

        def requeue() -> None:
            try:
                message.requeue()
            except Exception:  # a closed channel: the broker hands the message back anyway
                logger.warning("could not requeue the message", exc_info=True)

        consumer = self.consumer
        consumer.timer.call_after(REQUEUE_DELAY, consumer.call_soon, (requeue,))


def _expired(expires: datetime | None) -> bool:
    """Celery's own test (``Request.maybe_expire``): past the deadline, naive or aware."""
    if expires is None:
        return False
    return datetime.now(timezone.utc if expires.tzinfo else None) > expires


class ExpiryDeadLetters(Request):  # type: ignore[misc]
    """A request that stores itself as ``MessageExpired`` before Celery revokes it unrun.

    Mixed into each task's request class by :class:`DeadLetterIntake`, in front
    of a custom ``Task.Request`` if the task has one, and of ReliableTask's
    (:class:`~celery_reliable.delivery.time_limit.RequeueOnHardTimeLimit`): it overrides
    only ``revoked()``, so their ``on_timeout``/``on_failure`` stay in force.
    """

    __slots__ = ()
    _DETECTOR = "expires"

    def revoked(self) -> bool:
        if self._already_revoked or not _expired(self.expires):  # type: ignore[has-type]
            return bool(super().revoked())
        intake = _INTAKES[self.app]
        reason = DeadLetterReason.MESSAGE_EXPIRED
        build = partial(
            failed_message,
            self.message,
            intake.accept_content,
            self.hostname,
            arguments=(self.args, self.kwargs),
        )
        try:
            entry_id = record(
                intake.letters,
                build,
                reason,
                exc=None,
                detector=self._DETECTOR,
                detail=f"expired at {self.expires.isoformat()}",
            )
        except Exception:
            logger.exception("could not dead-letter expired message %s", self.id)
            return bool(super().revoked())
        if entry_id is None:  # skipped, now and by any later check; requeued by the intake
            task_ready(self)
            self._already_revoked = True  # type: ignore[misc]
            self.acknowledged = True  # type: ignore[misc]
            intake.requeue_later(self.message)
            return True
        # Celery's own revocation (Request._announce_revoked): REVOKED in the backend, as
        # plain Celery stores an expired message, with an exception that is both Celery's
        # TaskRevokedError and our DeadLettered (its reason and entry id), and the
        # chord's part counted. Flower shows DEAD_LETTERED (the event after task-revoked).
        revoked_tasks.add(self.id)
        task_ready(self)
        self.send_event("task-revoked", terminated=False, signum=None, expired=True)
        revoked = TaskRevokedError("expired")
        if self.store_errors:
            dead = DeadLettered.of(reason.value, entry_id, revoked)
            _store_final(self.task.backend, self.id, REVOKED, dead, request=self._context)
        if self._context.chord:
            self.task.backend.on_chord_part_return(self._context, REVOKED, revoked)
        announce(
            self.task.backend,
            self.id,
            DEAD_LETTERED,
            _meta(entry_id, reason, self._DETECTOR),
            send_event=self.send_event,
            store=False,
        )
        self.acknowledge()
        self._already_revoked = True  # type: ignore[misc]
        task_revoked.send(
            self.task, request=self._context, terminated=False, signum=None, expired=True
        )
        return True


@cache
def _with_expiry(base: type) -> type:
    """``base`` with :class:`ExpiryDeadLetters` in front (once: it may already be there)."""
    if issubclass(base, ExpiryDeadLetters):
        return base
    return type(f"DeadLetterExpired{base.__name__}", (ExpiryDeadLetters, base), {"__slots__": ()})
