"""What an operator needs to see and do in the outbox and the inbox, without raw SQL.

``celery reliable outbox|inbox stats|list|retry`` are thin wrappers around this module.
Retrying a poisoned row resets its error state and attempts, keeps the last error in the
log line, and is logged at WARNING so the manual intervention leaves a trace.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select, update

from .clock import utcnow
from .dead_letters.types import require_count
from .exceptions import InvalidArgument
from .store.base import Status
from .store.outbox_rows import PENDING, POISONED

if TYPE_CHECKING:
    from .metrics import Metrics
    from .store.base import InboxStore
    from .store.database import Database
    from .store.tables import Tables

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class OutboxStats:
    """Outbox rows by state, and how long the oldest due row has waited."""

    due: int  # pending and due now: the relay's backlog
    delayed: int  # pending, due later (countdown/eta, backoff)
    sent: int
    poisoned: int
    oldest_due_age: timedelta | None

    def as_dict(self) -> dict[str, Any]:
        age = self.oldest_due_age
        return {**self.__dict__, "oldest_due_age": None if age is None else age.total_seconds()}


class Admin:
    """``reliable.admin``: stats, poisoned rows and manual retries."""

    def __init__(
        self, database: Database, tables: Tables, store: InboxStore, metrics: Metrics
    ) -> None:
        self.database = database
        self.tables = tables
        self.store = store  # lifts the quarantine the inbox's own way (new version)
        self.metrics = metrics  # counts manual retries

    # -- outbox -----------------------------------------------------------------------------

    def outbox_stats(self) -> OutboxStats:
        t, now = self.tables.outbox, utcnow()
        with self.database.engine.connect() as conn:
            counts: dict[str, int] = dict(
                conn.execute(select(t.c.status, func.count()).group_by(t.c.status)).all()
            )
            due = conn.execute(
                select(func.count(), func.min(t.c.available_at))
                .where(t.c.status == PENDING)
                .where(t.c.available_at <= now)
            ).one()
        return OutboxStats(
            due=int(due[0]),
            delayed=int(counts.get(PENDING, 0)) - int(due[0]),
            sent=int(counts.get("sent", 0)),
            poisoned=int(counts.get(POISONED, 0)),
            oldest_due_age=None if due[1] is None else now - due[1],
        )

    def outbox_rows(self, *, poisoned: bool, limit: int = 50) -> list[dict[str, Any]]:
        """Poisoned rows, or pending ones (oldest first)."""
        require_count(limit, "limit")
        t = self.tables.outbox
        query = (
            select(
                t.c.id,
                t.c.message_id,
                t.c.task_name,
                t.c.status,
                t.c.attempts,
                t.c.created_at,
                t.c.available_at,
                t.c.last_error,
            )
            .where(t.c.status == (POISONED if poisoned else PENDING))
            .order_by(t.c.id)
            .limit(limit)
        )
        with self.database.engine.connect() as conn:
            return [dict(row._mapping) for row in conn.execute(query)]

    def retry_outbox(self, ids: Sequence[int]) -> int:
        """Send poisoned outbox rows again: pending, no attempts, due now. All or nothing."""
        t = self.tables.outbox
        with self.database.engine.begin() as conn:
            found = conn.execute(
                select(t.c.id, t.c.last_error)
                .where(t.c.id.in_(ids))
                .where(t.c.status == POISONED)
                .with_for_update()
            ).all()
            missing = sorted(set(ids) - {row.id for row in found})
            if missing:
                raise InvalidArgument(f"not poisoned outbox rows: {', '.join(map(str, missing))}")
            conn.execute(
                update(t)
                .where(t.c.id.in_(ids))
                .values(
                    status=PENDING,
                    attempts=0,
                    available_at=utcnow(),
                    claim_token=None,
                    claimed_at=None,
                    last_error=None,
                )
            )
        for row in found:
            logger.warning("outbox row %s retried by hand (last error: %s)", row.id, row.last_error)
        self.metrics.manual_retries.add(len(found), {"kind": "outbox"})
        return len(found)

    # -- inbox ------------------------------------------------------------------------------

    def inbox_stats(self) -> dict[str, int]:
        """Inbox marks by status."""
        t = self.tables.inbox_status
        with self.database.engine.connect() as conn:
            counts: dict[str, int] = dict(
                conn.execute(select(t.c.status, func.count()).group_by(t.c.status)).all()
            )
        return {status.value: int(counts.get(status.value, 0)) for status in Status}

    def inbox_marks(self, status: Status, *, limit: int = 50) -> list[dict[str, Any]]:
        """The (message id, handler key) marks in ``status``, by message id."""
        require_count(limit, "limit")
        t = self.tables.inbox_status
        query = (
            select(t.c.message_id, t.c.handler_key, t.c.status, t.c.attempts, t.c.last_error)
            .where(t.c.status == Status(status).value)
            .order_by(t.c.message_id, t.c.handler_key)
            .limit(limit)
        )
        with self.database.engine.connect() as conn:
            return [dict(row._mapping) for row in conn.execute(query)]

    def retry_inbox(self, message_ids: Sequence[str], handler_key: str | None = None) -> int:
        """Let quarantined messages run on their next delivery (all their handler keys, or one).

        This does not send anything: a message that is not on the broker any more comes
        back through ``dlq replay`` (which lifts the quarantine itself). All or nothing.
        """
        t = self.tables.inbox_status
        where = [t.c.message_id.in_(message_ids), t.c.status == Status.POISONED.value]
        if handler_key is not None:
            where.append(t.c.handler_key == handler_key)
        with self.database.engine.begin() as conn:
            found = conn.execute(
                select(t.c.message_id, t.c.handler_key).where(*where).with_for_update()
            ).all()
            missing = sorted(set(message_ids) - {row.message_id for row in found})
            if missing:
                raise InvalidArgument(f"not quarantined in the inbox: {', '.join(missing)}")
            self.store.lift_quarantine(message_ids, handler_key, connection=conn)
        for message_id, key in found:
            logger.warning("inbox mark %s / %s retried by hand", message_id, key)
        self.metrics.manual_retries.add(len(found), {"kind": "inbox"})
        return len(found)
