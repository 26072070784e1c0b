"""``ReliableTask``: a Celery task whose messages go through the delivery pipeline.

The class keeps what a user writes and calls: the options (``handler_key``,
``retry_policy``, ...), ``self.transaction()`` and ``self.message_id``. What happens to a
delivery (claim, body, completion, retry, dead letter) is :mod:`celery_reliable.delivery`.
Each task holds a :class:`~celery_reliable.delivery.Binding`: its options resolved once
and the app's pipeline, bound by ``Reliable.check()`` when a worker starts, or on first
use for eager runs and tasks registered later.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, Protocol

from celery import Task
from celery.exceptions import Ignore, Reject, Retry
from sqlalchemy.orm import Session

from .dead_lettered import DeadLettered
from .delivery import Binding
from .exceptions import ConfigurationError
from .message import MESSAGE_ID_HEADER, SENT_AT_HEADER, message_id_from, validate_message_id
from .retry import RetryPolicy

#: The app attribute where ``Reliable(app)`` registers itself: a task finds its binder there.
EXTENSION_ATTRIBUTE = "_celery_reliable"


class Binder(Protocol):
    """What binds a task to its pipeline (``Reliable``, seen from below)."""

    def bind(self, task: ReliableTask) -> Binding: ...


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
    #: A failure that reaches Celery is final here (a dead letter is already kept, or the
    #: effects are committed): acknowledge it whatever ``task_acks_on_failure_or_timeout``
    #: says, or a broker dead-letter exchange would get a second copy.
    acks_on_failure = True
    #: A hard time limit (the pool kills the child) requeues the message instead of
    #: acknowledging it as FAILURE with its claim left ``processing``: the redelivery takes
    #: the claim over and counts a run, up to ``reliable_max_attempts``, then dead-letters it.
    acks_on_timeout = False
    #: ... and reports no failure for the killed run (no FAILURE, errback or chord part):
    #: the redelivery's ending is the task's. A subclass that sets its own ``Request``
    #: (not derived from this one) gets Celery's: FAILURE at the kill, then the redelivery.
    Request = "celery_reliable.delivery.time_limit:RequeueOnHardTimeLimit"
    handler_key: str | None = None
    legacy_handler_keys: tuple[str, ...] = ()
    retry_policy: str | RetryPolicy | None = None
    circuit_breaker: str | None = None
    max_age: timedelta | None = None
    max_processing_time: timedelta | None = None
    transient_exceptions: tuple[type[BaseException] | str, ...] = ()
    poison_exceptions: tuple[type[BaseException] | str, ...] = ()
    _reliable_binding: Binding | None = None

    def apply_async(self, args: Any = None, kwargs: Any = None, *a: Any, **options: Any) -> Any:
        """Publish, refusing a bad ``reliable_message_id`` header before anything is sent."""
        headers = options.get("headers") or {}
        if MESSAGE_ID_HEADER in headers:
            validate_message_id(headers[MESSAGE_ID_HEADER], source=f"header {MESSAGE_ID_HEADER!r}")
        if SENT_AT_HEADER not in headers:  # where the lag metrics start
            options["headers"] = {**headers, SENT_AT_HEADER: time.time()}
        return super().apply_async(args, kwargs, *a, **options)

    @classmethod
    def bind(cls, app: Any) -> Any:
        """Celery's built-in tasks (``celery.*``) keep Celery's acks settings and Request;
        the others count a dead letter among the exceptions they ``throws``.

        With ``task_cls="celery_reliable:ReliableTask"`` the built-in tasks are made from
        this class too; they are Celery's machinery (``chord_unlock`` polls with
        ``self.retry``), not messages of the application, so they stay plain tasks (see
        ``__call__``).
        """
        if _builtin(cls.name):
            for attribute in ("acks_late", "reject_on_worker_lost", "acks_on_failure"):
                if attribute not in cls.__dict__:
                    setattr(cls, attribute, None)  # Celery fills it from the app's settings
            if "Request" not in cls.__dict__:
                cls.Request = Task.Request
        elif not issubclass(DeadLettered, tuple(cls.throws)):
            # A dead letter is an expected ending, already logged by the pipeline with its
            # entry: Celery then logs one INFO line ("raised expected"), not an ERROR with a
            # traceback through the pipeline. Added to the task's own ``throws``, if any.
            cls.throws = (*cls.throws, DeadLettered)
        return super().bind(app)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        request = self.request_stack.top
        if request is None or request.id is None or _builtin(self.name):
            return super().__call__(*args, **kwargs)  # not a message, or Celery's own task
        binding = self.reliable_binding()
        return binding.pipeline.deliver(self, binding.options, request, args, kwargs)

    def retry(self, *args: Any, **kwargs: Any) -> Any:
        """Celery's ``retry``, counting as Celery does; when Celery gives up, dead-letter.

        Past ``max_retries`` Celery raises ``MaxRetriesExceededError`` (or re-raises the
        body's exception): the run then ends as a dead letter with ``MaxRetriesExceeded`` at
        once, not retried again by the task's retry policy. ``autoretry_for`` calls this too.
        """
        try:
            return super().retry(*args, **kwargs)
        except (Retry, Reject):  # retried, or the retry could not be sent: Celery's ways
            raise
        except Exception:
            run = getattr(self.request, "reliable_run", None)
            if run is not None:
                run.gave_up_retrying = True
            raise

    def on_replace(self, sig: Any) -> Any:
        """``replace()``: send the replacement, then end this run as done by replacement.

        The replaced message counts as processed (not failed), so a redelivery of it is a
        duplicate and sends no second replacement. The replacement is sent first: a crash
        between the two sends it again, never loses it.
        """
        run = getattr(self.request, "reliable_run", None)
        if run is None or run.eager:
            return super().on_replace(sig)
        sig.delay()
        self.reliable_binding().pipeline.replaced(run)
        raise Ignore("Replaced by new task")

    @property
    def message_id(self) -> str | None:
        """The current run's message id; None when the task is called as a plain function.

        Pass it as the idempotency key of calls to outside services (a payment provider, a
        mailer): a redelivery that runs again after a crash then repeats the same request
        instead of making a second one.
        """
        if self.request.id is None:
            return None
        return message_id_from(
            self.request.id,
            self.request.headers or {},
            replaced_nesting=getattr(self.request, "replaced_task_nesting", 0),
        )

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A Session on the reliable store whose commit carries the inbox completion mark.

        Enter it once per run. The end of the ``with`` block flushes the writes; they
        commit when the task returns, in one commit with the completion mark and the
        return value: that is the moment the message counts as processed, and the writes,
        the mark and the result are all there, or none of them. Code after the block that
        raises (``self.retry()`` included) commits nothing. Called outside a worker (the
        task called as a plain function) it is an ordinary unit of work on the store.
        """
        with self.reliable_binding().pipeline.transaction(self.request) as session:
            yield session

    def reliable_binding(self) -> Binding:
        """This task's resolved options and its app's delivery pipeline."""
        binding = self._reliable_binding
        if binding is None:  # not bound at start-up: an eager run, or registered later
            binder: Binder | None = getattr(self.app, EXTENSION_ATTRIBUTE, None)
            if binder is None:
                raise ConfigurationError(
                    f"task {self.name!r} is a ReliableTask, but app {self.app.main!r} has no "
                    "celery_reliable extension: call Reliable(app) where the app is created"
                )
            binding = binder.bind(self)
        return binding

    def use_reliable_binding(self, binding: Binding) -> None:
        """Called by the extension: deliver this task's messages through ``binding``."""
        self._reliable_binding = binding


def _builtin(name: str | None) -> bool:
    """Celery's own tasks (``celery.chord_unlock``, ``celery.backend_cleanup``, ...)."""
    return bool(name) and str(name).startswith("celery.")
