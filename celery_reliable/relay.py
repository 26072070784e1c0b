"""The relay: move committed outbox rows to the broker, each row published by one relay.

A batch is claimed under a fresh token, published through one broker connection (with
publisher confirms on RabbitMQ, waited for once per batch, so a row is marked sent only
after the broker has it; pipelined on Redis; see ``celery_reliable.brokers``), and marked
sent under that token. A relay that crashes after publishing and before marking
leaves rows that another relay reclaims after ``reliable_stuck_threshold`` and publishes
again; the receiving ReliableTask's inbox absorbs that duplicate (same task id and message
id), so end to end the effect happens once.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from celery import Celery

from .brokers import BatchPublisher, publisher_for
from .clock import utcnow
from .durations import readable
from .exceptions import LockLost
from .locks import Lock
from .outage import Outage
from .settings import Settings
from .store.outbox_rows import Claimed, OutboxRows
from .store.tables import Tables
from .store.wakeup import Wakeup, wakeup_for

logger = logging.getLogger(__name__)

_MAX_BACKOFF = timedelta(minutes=10)
#: How long a drain tries again while every due row it sees is held back (see ``Batch``),
#: and how long it pauses between tries.
DRAIN_PATIENCE = 5.0
HELD_BACK_PAUSE = 0.02


class _ChannelClosedByMessage(Exception):
    """The broker closed the channel over one message, which has been charged for it."""


def backoff(attempts: int) -> timedelta:
    """Exponential backoff with full jitter: up to 1 s, 2 s, 4 s, ... at most 10 minutes."""
    ceiling = min(_MAX_BACKOFF.total_seconds(), 2.0 ** max(attempts - 1, 0))
    return timedelta(seconds=random.uniform(ceiling / 2, ceiling))


def _nothing(*args: Any) -> None:
    pass


@dataclass
class RelayHooks:
    """What the relay tells the rest of the system: metrics, the health heartbeat, a lock.

    ``lock``, when set, makes this a single-relay deployment (``reliable_relay_single``):
    the relay publishes only while it holds that lock; the others stay idle, and healthy.
    """

    batch: Callable[[int, int, float], None] = _nothing  # claimed, sent, seconds
    poisoned: Callable[[], None] = _nothing
    cycle: Callable[[], None] = _nothing  # a loop of run() ended, busy or idle
    stopped: Callable[[], None] = _nothing  # run() returned: asked to stop
    died: Callable[[str], None] = _nothing  # run() ended on an exception (its description)
    lock: Callable[[], Lock] | None = None


class Relay:
    """Publishes due outbox rows in batches; several relays may run at once.

    One relay per thread: it keeps a broker connection and what its publisher has sent.
    """

    def __init__(
        self,
        app: Celery,
        rows: OutboxRows,
        settings: Settings,
        tables: Tables,
        hooks: RelayHooks | None = None,
    ) -> None:
        self.app = app
        self.rows = rows
        self.settings = settings
        self.tables = tables
        self.hooks = hooks or RelayHooks()
        self._connection: Any = None  # kept across batches; rebuilt after a failure
        self._publisher: BatchPublisher | None = None

    def run_batch(self) -> int:
        """Claim, publish and mark one batch; return how many rows were confirmed sent."""
        return self._batch()[1]

    def _batch(self) -> tuple[int, int, bool]:
        """One batch: (rows claimed, rows confirmed sent, held back: see ``Batch``)."""
        started = time.monotonic()
        now = utcnow()
        token = uuid.uuid4().hex
        claimed = self.rows.claim(
            self.settings.relay_batch_size, now, token, now - self.settings.stuck_threshold
        )
        if not claimed:
            return 0, 0, claimed.held_back
        sent = self._publish_claimed(claimed, token)
        seconds = time.monotonic() - started
        self.hooks.batch(len(claimed), sent, seconds)
        logger.info(
            "relay batch: %d of %d published in %.3f s (%.0f/s), the oldest waited %s",
            sent,
            len(claimed),
            seconds,
            sent / seconds if seconds > 0 else 0.0,
            readable(now - min(row.available_at for row in claimed)),
        )
        return len(claimed), sent, False

    def _publish_claimed(self, claimed: Sequence[Claimed], token: str) -> int:
        """Publish a claimed batch and mark it; return how many rows were confirmed sent."""
        sent: list[int] = []
        try:
            self._publish_batch(claimed, token, sent)
        except _ChannelClosedByMessage:
            # That message was charged; the others published on the lost channel are
            # unconfirmed, so they go back and are published again (the inbox dedups).
            self._drop_broker()
            self.rows.release([r.id for r in claimed], token)
            return 0
        except Exception as exc:
            # The broker went away mid-batch: keep what it confirmed, hand the rest back.
            logger.warning("relay lost the broker after %d of %d: %s", len(sent), len(claimed), exc)
            self._drop_broker()
            self.rows.mark_sent(sent, token, utcnow())
            confirmed = set(sent)
            self.rows.release([r.id for r in claimed if r.id not in confirmed], token)
            raise
        marked = self.rows.mark_sent(sent, token, utcnow())
        if marked < len(sent):
            logger.warning(
                "relay batch %s lost %d rows to another relay", token, len(sent) - marked
            )
        return marked

    def _publish_batch(self, claimed: Sequence[Claimed], token: str, sent: list[int]) -> None:
        """Publish the rows in order and learn once, for the batch, what the broker has.

        Appends the ids the broker confirmed to ``sent``; broker errors propagate. When a
        row with an ordering key fails here, the rest of its key in this batch is handed
        back unpublished, so nothing overtakes it.
        """
        connection, publisher = self._broker()
        failed_keys: set[str] = set()
        held_back: list[int] = []
        with publisher.batch():
            for row in claimed:
                if row.ordering_key in failed_keys:
                    held_back.append(row.id)
                    continue
                try:
                    publisher.publish(row)
                except connection.connection_errors:
                    raise  # the broker's trouble, not this message's: the batch is handed back
                except connection.channel_errors as exc:
                    # The broker closed the channel over this message (an exchange that does
                    # not exist, ...): charge it, and end the batch, whose channel is gone.
                    self._failed(row.id, row.attempts, token, f"{type(exc).__name__}: {exc}")
                    raise _ChannelClosedByMessage() from exc
                except Exception as exc:  # this message, not the broker
                    self._failed(row.id, row.attempts, token, f"{type(exc).__name__}: {exc}")
                    if row.ordering_key is not None:
                        failed_keys.add(row.ordering_key)
        acked, refused = publisher.confirmed()
        sent.extend(acked)
        for row in claimed:
            if row.id in refused:
                self._failed(row.id, row.attempts, token, refused[row.id])
        self.rows.release(held_back, token)

    def _failed(self, row_id: int, attempts: int, token: str, error: str) -> None:
        logger.warning("outbox row %s failed to publish: %s", row_id, error)
        if attempts + 1 >= self.settings.outbox_max_attempts:
            self.hooks.poisoned()
        self.rows.mark_failed(
            row_id,
            token,
            error,
            utcnow() + backoff(attempts + 1),
            self.settings.outbox_max_attempts,
        )

    def drain(self, progress: Callable[[int], None] | None = None) -> int:
        """Publish batches until nothing is due; return how many were sent.

        ``progress`` is called with the rows each batch claimed (a progress bar's update).
        A claim that saw due rows but could take none, because another relay was claiming
        the rows before them in their keys (``Batch.held_back``), is tried again every
        :data:`HELD_BACK_PAUSE` for up to :data:`DRAIN_PATIENCE` without progress, so that
        ``relay --once`` beside running relays does not end with rows still due.
        """
        total = 0
        held_since: float | None = None
        while True:
            claimed, sent, held_back = self._batch()
            if claimed:
                total += sent
                held_since = None
                if progress is not None:
                    progress(claimed)
                continue
            if not held_back:
                return total
            # Due rows behind another relay's claim in progress: it ends in milliseconds.
            held_since = time.monotonic() if held_since is None else held_since
            if time.monotonic() - held_since > DRAIN_PATIENCE:
                logger.warning(
                    "relay drain: due rows stayed held back for %s; giving up this drain",
                    readable(timedelta(seconds=DRAIN_PATIENCE)),
                )
                return total
            time.sleep(HELD_BACK_PAUSE)

    def run(self, stop: threading.Event) -> None:
        """Publish until ``stop`` is set; a batch under way is finished first.

        When idle it waits for the store's commit notifications (PostgreSQL) or polls.
        In single-relay mode it publishes only while it holds the relay lock. A cycle that
        fails (store, broker or lock store unreachable) is logged with its cause and tried
        again with backoff: no outage ends the loop. If the loop ends anyway (a bug, a
        ``SystemExit`` from a library), that is logged at CRITICAL and reported through
        ``hooks.died``, so that ``health --live`` fails instead of seeing no relay at all.
        """
        wakeup = wakeup_for(self.rows.database, self.tables, stop)
        lock = self.hooks.lock() if self.hooks.lock is not None else None
        try:
            self._loop(stop, wakeup, lock)
        except BaseException as exc:
            logger.critical("relay loop died: %s: %s", type(exc).__name__, exc, exc_info=True)
            self.hooks.died(f"{type(exc).__name__}: {exc}")
            raise
        else:
            self.hooks.stopped()
        finally:
            if lock is not None:
                lock.release()
            wakeup.close()
            self.close()

    def _loop(self, stop: threading.Event, wakeup: Wakeup, lock: Lock | None) -> None:
        idle = self.settings.relay_idle_interval.total_seconds()
        trouble = Outage("relay cycle", logger)
        while not stop.is_set():
            self.hooks.cycle()
            try:
                standby = lock is not None and not self._holding(lock)
                sent = 0 if standby else self.run_batch()
            except Exception as exc:
                stop.wait(trouble.failed(exc))
                continue
            trouble.recovered()
            if standby:
                stop.wait(idle)  # another relay publishes; this one stands by
            elif not sent:
                wakeup.wait(idle)

    @staticmethod
    def _holding(lock: Lock) -> bool:
        """Still (or now) the single relay? A lost lock is let go and taken again later."""
        if not lock.held:
            return lock.acquire()
        try:
            lock.check()
        except LockLost:
            lock.release()
            return False
        return True

    def _broker(self) -> tuple[Any, BatchPublisher]:
        """The relay's broker connection and its publisher, kept across batches."""
        if self._connection is None or self._publisher is None:
            connection = self.app.connection_for_write()
            connection.ensure_connection(max_retries=1)
            self._publisher = publisher_for(connection, self.app)
            self._connection = connection
        return self._connection, self._publisher

    def _drop_broker(self) -> None:
        connection, self._connection, self._publisher = self._connection, None, None
        if connection is not None:
            try:
                connection.release()
            except Exception:  # already broken; the next batch connects afresh
                logger.debug("closing the broken broker connection failed", exc_info=True)

    def close(self) -> None:
        """Release the broker connection (the relay can be used again afterwards)."""
        self._drop_broker()
