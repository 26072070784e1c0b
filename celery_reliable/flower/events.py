"""Flower's task states with ours last: ``DUPLICATE`` and ``DEAD_LETTERED`` are final.

A duplicate ends as a Celery ``SUCCESS`` (the caller's ``.get()`` returns the original
result) and a dead letter as a Celery ``FAILURE`` (``.get()`` raises ``DeadLettered``), so
chains, chords and errbacks work as on plain Celery. The worker also sends a
``task-duplicate`` / ``task-dead_lettered`` event. Celery's event state ranks a custom
state below SUCCESS and FAILURE, so Flower would show only the latter; here our two states
rank first, whichever event arrives first. Only the Flower started by ``celery reliable
flower`` is affected: its events state is built with this task class.
"""

from __future__ import annotations

from typing import Any

from celery import states
from celery.events.state import Task

from celery_reliable.states import DEAD_LETTERED, DUPLICATE

_FINAL = frozenset({DUPLICATE, DEAD_LETTERED})


def final_first(state: str) -> int:
    """Celery's precedence (lower wins), with our final states above every other."""
    return -1 if state in _FINAL else int(states.precedence(state))


class ReliableTaskState(Task):  # type: ignore[misc]
    """A task in Flower's event state, ranking ``DUPLICATE``/``DEAD_LETTERED`` first."""

    def event(
        self,
        type_: str,
        timestamp: float | None = None,
        local_received: float | None = None,
        fields: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs["precedence"] = final_first
        super().event(type_, timestamp, local_received, fields, **kwargs)


def reliable_events(flower_events: type, **kwargs: Any) -> Any:
    """Flower's ``Events`` thread (built with ``kwargs``), its state using our task class.

    The state is rebuilt from its own pickling arguments, so a state Flower restored from
    ``--persistent`` storage keeps its tasks and counters.
    """
    from flower.events import EventsState  # type: ignore[import-untyped]

    class ReliableEventsState(EventsState):  # type: ignore[misc]
        Task = ReliableTaskState

    events = flower_events(**kwargs)
    old = events.state
    _, args = old.__reduce__()[:2]
    events.state = ReliableEventsState(*args)
    events.state.counter = old.counter
    return events
