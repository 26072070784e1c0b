"""Custom task states, shown by the result backend and Flower, and how they are announced."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from celery.backends.base import DisabledBackend

logger = logging.getLogger(__name__)

#: The message had already been processed under this handler key; the body did not run.
DUPLICATE = "DUPLICATE"

#: The message failed for good and was stored as a dead letter (its entry id is in the meta).
DEAD_LETTERED = "DEAD_LETTERED"


def announce(
    backend: Any,
    task_id: str,
    state: str,
    meta: Any,
    *,
    send_event: Callable[..., Any] | None,
    store: bool = True,
    request: Any = None,
    event_fields: Mapping[str, Any] | None = None,
) -> None:
    """Set ``state`` in the result backend and send a ``task-<state>`` event for Flower.

    Shared by the task pipeline and the worker's intake (messages that never reach a task
    body). Both call it after the outcome is committed, so neither a disabled or failing
    backend nor a lost event may change that outcome: failures are logged, not raised.
    ``send_event(type, **fields)`` is the sender's own (the task's, the request's, or the
    consumer's dispatcher); None when there is no event dispatcher. ``meta`` is what the
    backend stores (a DUPLICATE's is the first run's result); the event carries
    ``event_fields``, or ``meta`` when that is a mapping.
    """
    if store and not isinstance(backend, DisabledBackend):
        try:
            backend.store_result(task_id, meta, state, request=request)
        except Exception:
            logger.warning("could not store state %s for %s", state, task_id, exc_info=True)
    if send_event is None:
        return
    try:
        send_event(f"task-{state.lower()}", **(event_fields or meta))
    except Exception:
        logger.warning("could not send the task-%s event", state.lower(), exc_info=True)
