"""The one object a delivery carries from claim to completion."""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.orm import Session, SessionTransaction

from celery_reliable.clock import utcnow
from celery_reliable.inbox import Claim

from .misuse import CommitGuard
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


class PendingTransaction:
    """The Session of ``self.transaction()`` once its block has exited: flushed, not committed.

    It commits when the body returns, with the completion mark and the result, so that the
    mark never lacks the result and code after the block that fails commits nothing. A run
    that ends any other way closes it, which rolls the writes back.
    """

    def __init__(self, session: Session, transaction: SessionTransaction) -> None:
        self.session = session
        self.transaction = transaction
        self.commits = CommitGuard(session, transaction)

    def check(self) -> None:
        """Raise TransactionMisuse if the body committed or ended the transaction itself."""
        self.commits.check()

    def commit(self, complete: Callable[[Connection], None]) -> None:
        """Write the completion mark with ``complete`` in this transaction, then commit."""
        self.commits.check()  # code after the block may have ended it too
        complete(self.session.connection())
        self.commits.allow()
        self.transaction.commit()

    def close(self) -> None:
        """Give the connection back; what was not committed is rolled back."""
        self.session.close()


@dataclass(eq=False)
class Run:
    """One delivery of a message to a ReliableTask.

    Parked on the request (``request.reliable_run``) while the body runs, so that
    ``self.transaction()`` finds the run whose completion commits its writes.
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
    #: Its block exited: the writes wait for the completion mark, when the body returns.
    transaction: PendingTransaction | None = None
    #: The completion mark is committed (with the body's writes, if any).
    completed: bool = False
    #: ``self.retry()`` found Celery's ``max_retries`` used up during this run.
    gave_up_retrying: bool = False

    def discard_transaction(self) -> None:
        """Close the pending transaction, if any: rolled back unless it was committed."""
        if self.transaction is not None:
            self.transaction.close()
            self.transaction = None

    @property
    def eager(self) -> bool:
        """Run by ``apply()`` / ``task_always_eager``: no broker to come back through."""
        return bool(self.request.is_eager)
