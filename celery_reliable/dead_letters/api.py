"""``reliable.dead_letters``: record, query, replay and purge dead-lettered messages.

An entry keeps everything needed to understand the failure and to send the message again:
task, arguments, headers, delivery info, the exception with its traceback, how many runs it
had and when it was first seen. It lives in the reliable store, so it commits in the same
transaction as the inbox's quarantine mark: a message is dead-lettered and quarantined, or
neither. Replaying goes through the transactional outbox, so marking an entry replayed and
publishing it again are one transaction too.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from celery import Celery

from celery_reliable.clock import utcnow
from celery_reliable.exceptions import InvalidArgument
from celery_reliable.metrics import Counter
from celery_reliable.outbox import Outbox
from celery_reliable.settings import Settings
from celery_reliable.store.base import InboxStore
from celery_reliable.store.dead_letter_rows import DeadLetterRows

from .alerts import Alerts
from .fitting import entry_of, entry_row, fit_row
from .replay import Replayer
from .types import (
    DeadLetter,
    DeadLetterFilter,
    DeadLetterReason,
    DeadLetterStatistics,
    FailedMessage,
    Redactor,
    Transform,
    require_count,
)

logger = logging.getLogger(__name__)


class DeadLetters:
    """``reliable.dead_letters``: record, query, replay and purge dead-lettered messages.

    ``redactor`` (a callable or None) masks stored fields: it receives a dict with ``args``,
    ``kwargs``, ``headers``, ``exception_message`` and ``traceback`` and returns it changed.
    Replay sends what is stored, so mask only what the task does not need, or replay with
    a ``transform`` that puts the real values back.

    Queries take their filter either as fields (``reason=``, ``task_name=``, ...) or whole,
    as a :class:`DeadLetterFilter` (``matching=``), the form the CLI and Flower build once.
    """

    def __init__(
        self,
        app: Celery,
        rows: DeadLetterRows,
        *,
        inbox_store: InboxStore,
        outbox: Outbox,
        settings: Settings,
        dead_lettered: Counter,
    ) -> None:
        """``rows`` keeps the entries; a replay writes through ``outbox`` and lifts the
        quarantine in ``inbox_store``; ``settings`` give the alert threshold and window;
        ``dead_lettered`` counts each entry added, by reason and task."""
        self._rows = rows
        self._dead_lettered = dead_lettered
        self._replay = Replayer(app, rows, inbox_store, outbox)
        self._alerts = Alerts(app, settings, self._rows.count)
        self.redactor: Redactor | None = None

    # -- recording ------------------------------------------------------------------------

    def add(
        self,
        message: FailedMessage,
        reason: DeadLetterReason | str,
        *,
        exc: BaseException | None = None,
        detail: str | None = None,
        detector: str | None = None,
        connection: Any = None,
    ) -> int:
        """Store an entry (in ``connection``'s transaction when given); return its id.

        The entry is logged (ERROR) when this call commits it. A caller that passes its own
        transaction logs after that commits: a line written before a rollback would name
        an entry that does not exist.
        """
        row = entry_row(
            message, reason, exc=exc, detail=detail, detector=detector, redactor=self.redactor
        )
        fit_row(row, self._rows.lengths, self._rows.value_budget())
        entry_id = self._rows.insert(row, connection=connection)
        self._dead_lettered.add(1, {"reason": row["reason"], "task": message.task_name or ""})
        if connection is not None:
            return entry_id
        logger.error(
            "message %s (%s) dead-lettered as %s: entry %s: %s",
            message.message_id,
            message.task_name,
            row["reason"],
            entry_id,
            row["exception_message"],
        )
        return entry_id

    def check_alert(self) -> bool:
        """Alert (ERROR log + signal) when dead letters in the window exceed the threshold.

        Called after each dead letter commits; one alert per window per process, so a
        storm is reported, not repeated for every message of it.
        """
        return self._alerts.check()

    # -- queries ----------------------------------------------------------------------------

    def list(
        self,
        reason: DeadLetterReason | str | None = None,
        task_name: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        replayed: bool | None = None,
        limit: int = 50,
        offset: int = 0,
        *,
        matching: DeadLetterFilter | None = None,
    ) -> list[DeadLetter]:
        """Entries matching every filter given, newest first; page with ``limit``/``offset``."""
        where = _filter(matching, reason, task_name, since, until, replayed)
        rows = self._rows.select(
            where, require_count(limit, "limit"), require_count(offset, "offset")
        )
        return [entry_of(row) for row in rows]

    def get(self, entry_id: int) -> DeadLetter | None:
        """The entry with this id, or None."""
        row = self._rows.get(entry_id)
        return None if row is None else entry_of(row)

    def count(
        self,
        reason: DeadLetterReason | str | None = None,
        task_name: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        replayed: bool | None = None,
        *,
        matching: DeadLetterFilter | None = None,
    ) -> int:
        """How many entries match every filter given."""
        return self._rows.count(_filter(matching, reason, task_name, since, until, replayed))

    def depth(self) -> int:
        """Entries not replayed yet: what the depth gauge and the health probe watch."""
        return self.count(replayed=False)

    def statistics(self) -> DeadLetterStatistics:
        """Entries and messages, entries by reason, task and failure group, and the oldest
        entry's age."""
        stats = self._rows.statistics()
        return DeadLetterStatistics(
            count=stats.count,
            messages=stats.messages,
            by_reason=stats.by_reason,
            by_task=stats.by_task,
            by_failure_group=stats.by_failure_group,
            oldest_age=None if stats.oldest is None else utcnow() - stats.oldest,
        )

    # -- replay -----------------------------------------------------------------------------

    def replay(self, entry_id: int, *, transform: Transform | None = None) -> str:
        """Publish the entry again through the outbox; return the new Celery task id.

        In one transaction: the entry is marked replayed, the inbox's quarantine of its
        message is lifted (so the replay runs, once), and the message is written to the
        outbox under the same message id. ``transform`` gets the signature about to be
        published and returns the one to publish (a fixed argument, a header).
        """
        return self._replay.replay(entry_id, transform)

    def replay_batch(
        self,
        reason: DeadLetterReason | str | None = None,
        task_name: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        *,
        matching: DeadLetterFilter | None = None,
        limit: int | None = None,
        dry_run: bool = False,
        transform: Transform | None = None,
        rate_limit: float | None = None,
        stop_after_failures: int | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> int:
        """Replay the entries not replayed yet that match; return how many were (or would be).

        Oldest first, up to ``REPLAY_CHUNK`` entries per transaction: each entry is
        replayed as :meth:`replay` does it, but a chunk's outbox rows, quarantine lifts and
        replay marks are written with one statement each, so a large backlog replays at
        thousands per second rather than one commit per entry. An entry that cannot be
        replayed (an unknown task, a failing ``transform``) is counted as a failure and
        left as it was; if a chunk's transaction fails, its entries are retried one by one
        so that only the bad ones fail. Entries dead-lettered after the batch started wait
        for the next batch.

        ``rate_limit`` is replays per second (chunks shrink so that pacing stays smooth);
        ``stop_after_failures`` ends the batch after that many entries failed to replay.
        ``progress`` is called with the number of entries done after each chunk (a
        progress bar's ``update``). A ``matching`` filter's ``replayed`` is ignored.
        """
        return self._replay.batch(
            _filter(matching, reason, task_name, since, until, None),
            limit=limit,
            dry_run=dry_run,
            transform=transform,
            rate_limit=rate_limit,
            stop_after_failures=stop_after_failures,
            progress=progress,
        )

    # -- removal ------------------------------------------------------------------------

    def purge_older_than(self, age: timedelta | str | float) -> int:
        """Delete entries dead-lettered over ``age`` ago ('30d', a timedelta); return how many."""
        return self._rows.delete_matching(DeadLetterFilter.older_than(age))

    def delete(self, entry_id: int) -> bool:
        """Delete one entry; False if there was none."""
        return self._rows.delete(entry_id)


def _filter(
    matching: DeadLetterFilter | None,
    reason: DeadLetterReason | str | None,
    task_name: str | None,
    since: datetime | None,
    until: datetime | None,
    replayed: bool | None,
) -> DeadLetterFilter:
    """The filter given whole, or built from its fields (not both)."""
    if matching is None:
        return DeadLetterFilter(reason, task_name, since, until, replayed)
    if not isinstance(matching, DeadLetterFilter):
        raise InvalidArgument(f"matching must be a DeadLetterFilter, got {matching!r}")
    if any(value is not None for value in (reason, task_name, since, until, replayed)):
        raise InvalidArgument("give a DeadLetterFilter or filter fields, not both")
    return matching
