"""A hard time limit requeues the message without reporting a failure to its caller.

When a run exceeds its hard ``time_limit``, the prefork pool kills the child and Celery's
main process calls the request's ``on_failure`` and then its ``on_timeout``. Celery's
``on_timeout`` stores ``FAILURE`` (``TimeLimitExceeded``), runs ``on_failure``, the
errbacks and the ``task_failure`` signal, counts a chord part as failed, sends
``task-failed``, and only then, with ``acks_on_timeout = False``, requeues the message.
For a ReliableTask the message is not done: its redelivery takes the run over and
completes it, or dead-letters it after ``reliable_max_attempts`` runs, and that ending is
what the caller's ``.get()``, the errbacks and the chord must see, once.

:class:`RequeueOnHardTimeLimit` is ``ReliableTask.Request`` (Celery's extension point):
for a hard limit it only requeues the message, logs one warning and sends
``task-retried`` (Flower shows ``RETRY``, as for our other retries). Soft limits, tasks
that acknowledge on timeout or not late, and a cold shutdown keep Celery's behaviour.
A ReliableTask subclass that sets its own ``Request`` (not a subclass of this one) gets
Celery's behaviour: ``FAILURE`` at the kill, then the redelivery.
"""

from __future__ import annotations

import logging
from typing import Any

from billiard.einfo import ExceptionWithTraceback
from billiard.exceptions import TimeLimitExceeded
from celery.worker import state as worker_state
from celery.worker.request import Request
from celery.worker.state import task_ready

logger = logging.getLogger(__name__)


class RequeueOnHardTimeLimit(Request):  # type: ignore[misc]
    """A request whose run, killed by its hard time limit, is requeued as a retry."""

    __slots__ = ()

    def _requeues_hard_timeouts(self) -> bool:
        """Whether a hard time limit hands the run over to the message's redelivery.

        Only for a message acknowledged late and requeued on timeout, and not in a cold
        shutdown (``should_terminate``), where Celery's own handling is what stops it.
        """
        task = self.task
        terminating = worker_state.should_terminate
        return bool(task.acks_late) and not task.acks_on_timeout and not terminating

    def on_failure(
        self, exc_info: Any, send_failed_event: bool = True, return_ok: bool = False
    ) -> Any:
        """The pool reports a hard time limit here first: requeue, without Celery's ERROR.

        Celery would requeue it too and log it with a traceback as a handler error; the
        kill is told once, by :meth:`on_timeout`, which the pool calls right after.
        """
        exc = exc_info.exception
        if isinstance(exc, ExceptionWithTraceback):
            exc = exc.exc
        if not isinstance(exc, TimeLimitExceeded) or not self._requeues_hard_timeouts():
            return super().on_failure(exc_info, send_failed_event, return_ok)
        task_ready(self)
        self.reject(requeue=True)
        return None

    def on_timeout(self, soft: bool, timeout: float | None) -> None:
        """A hard limit: requeue the message and say so; no failure is stored or reported."""
        if soft or not self._requeues_hard_timeouts():
            super().on_timeout(soft, timeout)
            return
        task_ready(self)
        logger.warning(
            "hard time limit (%ss) exceeded for %s[%s]: the run was killed; the message is "
            "requeued and its redelivery takes the run over (counted toward "
            "reliable_max_attempts)",
            timeout,
            self.name,
            self.id,
        )
        self.reject(requeue=True)  # a no-op when on_failure did it: the pool calls it first
        # After task-rejected, so that Flower's last state for the task is RETRY.
        self.send_event("task-retried", exception=repr(TimeLimitExceeded(timeout)))
