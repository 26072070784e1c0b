"""The one object a delivery carries from claim to completion."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from celery_reliable.clock import utcnow
from celery_reliable.inbox import Claim

from .options import TaskOptions


class Outcome(enum.Enum):
    """How a delivery ended; the values are the ``outcome`` attribute of the metrics."""

    COMPLETED = "completed"
    DUPLICATE = "duplicate"
    RETRY = "retry"
    DEFERRED = "deferred"
    DEAD_LETTERED = "dead_lettered"
    LOST = "lost"
    FAILED = "failed"


@dataclass(eq=False)
class Run:
    """One delivery of a message to a ReliableTask.

    Parked on the request (``request.reliable_run``) while the body runs, so that
    ``self.transaction()`` finds the claim its commit completes.
    """

    task: Any  # the ReliableTask; Any: Celery's Task is untyped
    options: TaskOptions
    request: Any
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    message_id: str
    started_at: datetime = field(default_factory=utcnow)
    #: Set once the inbox answered; None before (or when the message id was invalid).
    claim: Claim | None = None
    outcome: Outcome = Outcome.FAILED
    #: ``self.transaction()`` was entered: a second one in the same run is refused.
    transaction_entered: bool = False
    #: The completion mark is committed with the body's writes.
    completed: bool = False
    #: ``self.retry()`` found Celery's ``max_retries`` used up during this run.
    gave_up_retrying: bool = False

    @property
    def eager(self) -> bool:
        """Run by ``apply()`` / ``task_always_eager``: no broker to come back through."""
        return bool(self.request.is_eager)
