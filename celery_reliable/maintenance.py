"""Background maintenance: retention cleanup and stuck-message recovery.

Both jobs are idempotent and run in short transactions of ``reliable_cleanup_batch_size``
rows, so they can run beside live traffic and be interrupted at any point. ``celery beat``
runs them through the tasks and schedule entries that ``Reliable(app)`` registers
(``celery_reliable.schedule``); each run takes a distributed lock first, so one instance
does the work per cycle and the others skip quietly. A lock lost mid-run stops the run
between batches. Poisoned rows are never deleted automatically: they wait for a person.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import ColumnElement, Table, and_, delete, exists, func, select, tuple_, update

from .clock import utcnow
from .store.base import Status
from .store.outbox_rows import PENDING, SENT

if TYPE_CHECKING:
    from .locks import LockProvider
    from .settings import Settings
    from .store.database import Database
    from .store.tables import Tables

logger = logging.getLogger(__name__)

#: How long a maintenance run may hold its lock without renewing (renewed while it runs).
LOCK_TTL = timedelta(minutes=2)


@dataclass
class Report:
    """What a maintenance run did (or, dry, would do), by kind of row."""

    counts: dict[str, int] = field(default_factory=dict)
    skipped: bool = False  # another instance held the lock

    @property
    def total(self) -> int:
        return sum(self.counts.values())


class Maintenance:
    """``reliable.maintenance``: the jobs behind ``celery reliable cleanup|recover-stuck``."""

    def __init__(
        self,
        app_name: str | None,
        settings: Settings,
        database: Database,
        tables: Tables,
        *,
        locks: Callable[[], LockProvider],
        reliable_tasks: Callable[[], Iterable[str]],
    ) -> None:
        """``locks`` is called when a locked job runs: a lock provider named in the settings
        is built (and refused when misconfigured) only by what needs one. ``reliable_tasks``
        names the app's ReliableTasks, read when a run needs them (tasks register late).
        """
        self.app_name = app_name
        self.settings = settings
        self.database = database
        self.tables = tables
        self._locks = locks
        self._reliable_tasks = reliable_tasks

    def lock_name(self, job: str) -> str:
        """One lock per app, store and job; ``reliable_lock_namespace`` overrides the first part."""
        settings = self.settings
        namespace = settings.lock_namespace or f"{self.app_name}:{settings.table_prefix}"
        return f"{namespace}:{job}"

    def _locked(self, job: str, work: Callable[[Callable[[], None]], Report]) -> Report:
        lock = self._locks().lock(self.lock_name(job), ttl=LOCK_TTL)
        with lock as held:
            if not held:
                logger.info("%s skipped: another instance holds %s", job, lock.name)
                return Report(skipped=True)
            return work(lock.check)

    # -- retention cleanup ------------------------------------------------------------------

    def cleanup(
        self,
        *,
        dry_run: bool = False,
        locked: bool = True,
        progress: Callable[[int], None] | None = None,
    ) -> Report:
        """Delete what is past its retention; with ``dry_run``, only count it.

        ``progress`` is called with the number of rows each batch deleted.
        """
        if locked and not dry_run:
            return self._locked("cleanup", lambda check: self._cleanup(False, check, progress))
        return self._cleanup(dry_run, lambda: None, progress)

    def _cleanup(
        self,
        dry_run: bool,
        check: Callable[[], None],
        progress: Callable[[int], None] | None,
    ) -> Report:
        settings, tables, now = self.settings, self.tables, utcnow()
        report = Report()
        targets: list[tuple[str, Table, timedelta | None, Callable[[datetime], Any]]] = [
            (
                "outbox_sent",
                tables.outbox,
                settings.outbox_retention,
                lambda cutoff: and_(
                    tables.outbox.c.status == SENT, tables.outbox.c.sent_at < cutoff
                ),
            ),
            (
                "inbox_completed",
                tables.inbox_status,
                settings.inbox_retention,
                lambda cutoff: and_(
                    tables.inbox_status.c.status == Status.COMPLETED.value,
                    tables.inbox_status.c.completed_at < cutoff,
                ),
            ),
            (
                "inbox_orphaned_messages",
                tables.inbox_message,
                settings.inbox_retention,
                lambda cutoff: and_(
                    tables.inbox_message.c.first_seen_at < cutoff,
                    ~exists().where(
                        tables.inbox_status.c.message_id == tables.inbox_message.c.message_id
                    ),
                ),
            ),
            (
                "dead_letters",
                tables.dead_letter,
                settings.dead_letter_retention,
                lambda cutoff: tables.dead_letter.c.dead_lettered_at < cutoff,
            ),
        ]
        for kind, table, retention, condition in targets:
            if retention is None:
                continue
            where = condition(now - retention)
            if dry_run:
                report.counts[kind] = self._count(table, where)
            else:
                report.counts[kind] = self.delete_in_batches(table, where, check, progress)
        if not dry_run and report.total:
            logger.info("cleanup deleted %s", report.counts)
        return report

    def _count(self, table: Table, where: ColumnElement[bool]) -> int:
        with self.database.engine.connect() as conn:
            return int(conn.scalar(select(func.count()).select_from(table).where(where)) or 0)

    def delete_in_batches(
        self,
        table: Table,
        where: ColumnElement[bool],
        check: Callable[[], None] = lambda: None,
        progress: Callable[[int], None] | None = None,
    ) -> int:
        """Delete matching rows a batch per transaction; ``check`` runs between batches.

        Each batch is one statement, so the keys never travel to Python and back: MySQL
        and MariaDB take ``DELETE ... LIMIT`` (they refuse a subquery on the table being
        deleted from); PostgreSQL and SQLite delete by key from a limited subquery.
        """
        batch = self.settings.cleanup_batch_size
        if self.database.dialect in ("mysql", "mariadb"):
            statement = delete(table).where(where)
            statement = statement.with_dialect_options(mysql_limit=batch, mariadb_limit=batch)
        else:
            key = tuple_(*table.primary_key.columns)
            statement = delete(table).where(key.in_(select(*key.clauses).where(where).limit(batch)))
        deleted = 0
        while True:
            check()
            with self.database.engine.begin() as conn:
                count = int(conn.execute(statement).rowcount)
            deleted += count
            if progress is not None:
                progress(count)
            if count < batch:
                return deleted

    # -- stuck-message recovery -------------------------------------------------------------

    def recover_stuck(
        self, *, locked: bool = True, redeliver_unseen_after: timedelta | None = None
    ) -> Report:
        """Hand back work whose owner stopped more than ``reliable_stuck_threshold`` ago.

        - Outbox rows claimed by a relay that died: released, so any relay sends them now
          (relays would also reclaim them; this makes it visible and counted).
        - Inbox marks left ``processing`` by a worker that died: marked ``failed`` (their
          fencing version unchanged, so a run that is only slow can still complete), so
          the next delivery runs at once. Their broker copy comes back through redelivery;
          if it was lost with the worker, the warning names the message for a replay.
        - With ``reliable_outbox_redeliver_unseen_after`` (or ``redeliver_unseen_after``):
          sent outbox messages to a ReliableTask that no inbox has seen for that long are
          published again (see :meth:`redeliver_unseen`).
        """
        unseen = redeliver_unseen_after or self.settings.outbox_redeliver_unseen_after
        if locked:
            return self._locked("recover-stuck", lambda check: self._recover(unseen))
        return self._recover(unseen)

    def redeliver_unseen(self, after: timedelta) -> int:
        """Publish again sent outbox messages that no inbox has seen ``after`` their send.

        The broker confirmed them, yet no ReliableTask claimed their message id: a broker
        that loses accepted messages (kombu's Redis transport pops a message before it
        records it as unacknowledged) would otherwise lose them for good. A message that
        was only slow arrives twice, and the inbox runs it once. Only messages for
        ReliableTasks are considered (a plain task leaves no inbox record), at most one
        batch per run. Never published again:

        - a message created before ``reliable_inbox_retention``: "no inbox saw it" may only
          mean that cleanup deleted its completed mark, and the copy would run again;
        - a message that was dead-lettered (expired, unknown task, ...): no inbox will
          ever record it, and each copy would add a dead letter;
        - a message already published again ``reliable_outbox_max_redeliveries`` times.
        """
        reliable_names = list(self._reliable_tasks())
        if not reliable_names:
            return 0
        settings, tables, now = self.settings, self.tables, utcnow()
        outbox, seen, dead = tables.outbox, tables.inbox_message, tables.dead_letter
        unseen = (
            select(outbox.c.id, outbox.c.message_id, outbox.c.redeliveries)
            .where(outbox.c.status == SENT)
            .where(outbox.c.sent_at < now - after)
            .where(outbox.c.task_name.in_(reliable_names))
            .where(outbox.c.redeliveries < settings.outbox_max_redeliveries)
            .where(~exists().where(seen.c.message_id == outbox.c.message_id))
            .where(~exists().where(dead.c.message_id == outbox.c.message_id))
            .limit(settings.cleanup_batch_size)
        )
        if settings.inbox_retention is not None:
            unseen = unseen.where(outbox.c.created_at > now - settings.inbox_retention)
        with self.database.engine.begin() as conn:
            rows = conn.execute(unseen).all()
            if rows:
                conn.execute(
                    update(outbox)
                    .where(outbox.c.id.in_([row.id for row in rows]))
                    .where(outbox.c.status == SENT)
                    .values(
                        status=PENDING,
                        available_at=now,
                        claim_token=None,
                        claimed_at=None,
                        redeliveries=outbox.c.redeliveries + 1,
                        last_error=f"published again at {now.isoformat()}: no inbox saw it",
                    )
                )
        if rows:
            logger.warning(
                "%d sent messages no inbox saw after %s: published again", len(rows), after
            )
        last = [
            r.message_id for r in rows if r.redeliveries + 1 >= settings.outbox_max_redeliveries
        ]
        if last:
            logger.error(
                "published again for the last time (reliable_outbox_max_redeliveries=%d), "
                "no inbox has ever seen: %s",
                settings.outbox_max_redeliveries,
                ", ".join(last[:20]),
            )
        return len(rows)

    def _recover(self, unseen_after: timedelta | None) -> Report:
        tables = self.tables
        now = utcnow()
        stale = now - self.settings.stuck_threshold
        outbox, status = tables.outbox, tables.inbox_status
        with self.database.engine.begin() as conn:
            released = conn.execute(
                update(outbox)
                .where(outbox.c.status == PENDING)
                .where(outbox.c.claim_token.is_not(None))
                .where(outbox.c.claimed_at < stale)
                .values(claim_token=None, claimed_at=None)
            ).rowcount
            stuck = conn.execute(
                select(status.c.message_id, status.c.handler_key)
                .where(status.c.status == Status.PROCESSING.value)
                .where(status.c.processing_started_at < stale)
                .with_for_update()
            ).all()
            recovered = 0
            if stuck:
                recovered = conn.execute(
                    update(status)
                    .where(status.c.status == Status.PROCESSING.value)
                    .where(status.c.processing_started_at < stale)
                    .values(
                        status=Status.FAILED.value,
                        last_error=f"recovered at {now.isoformat()}: stuck in processing",
                    )
                ).rowcount
        for message_id, handler_key in stuck[:20]:
            logger.warning(
                "message %s (%s) was stuck in processing; it runs again on its next delivery",
                message_id,
                handler_key,
            )
        report = Report({"outbox_released": int(released), "inbox_recovered": int(recovered)})
        if unseen_after is not None:
            report.counts["outbox_redelivered"] = self.redeliver_unseen(unseen_after)
        if report.total:
            logger.warning("stuck-message recovery: %s", report.counts)
        return report
