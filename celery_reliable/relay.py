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
import uuid
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from celery import Celery
from kombu.messaging import Producer
from kombu.utils import json as kombu_json

from .brokers import BROKER_UNCERTAIN, BatchPublisher, ImmediatePublisher, publisher_for
from .inbox import utcnow
from .settings import Settings
from .store.outbox_rows import OutboxRows
from .store.tables import Tables
from .store.wakeup import wakeup_for

logger = logging.getLogger(__name__)

_MAX_BACKOFF = timedelta(minutes=10)


def backoff(attempts: int) -> timedelta:
    """Exponential backoff with full jitter: up to 1 s, 2 s, 4 s, ... at most 10 minutes."""
    ceiling = min(_MAX_BACKOFF.total_seconds(), 2.0 ** max(attempts - 1, 0))
    return timedelta(seconds=random.uniform(ceiling / 2, ceiling))


class Relay:
    """Publishes due outbox rows in batches; several relays may run at once."""

    def __init__(self, app: Celery, rows: OutboxRows, settings: Settings, tables: Tables) -> None:
        self.app = app
        self.rows = rows
        self.settings = settings
        self.tables = tables
        self._connection: Any = None  # kept across batches; rebuilt after a failure
        self._publisher: BatchPublisher = ImmediatePublisher()

    def run_batch(self) -> int:
        """Claim, publish and mark one batch; return how many rows were confirmed sent."""
        now = utcnow()
        token = uuid.uuid4().hex
        claimed = self.rows.claim(
            self.settings.relay_batch_size, now, token, now - self.settings.stuck_threshold
        )
        if not claimed:
            return 0
        sent: list[int] = []
        try:
            self._publish_batch(claimed, token, sent)
        except Exception as exc:
            # The broker went away mid-batch: keep what it confirmed, hand the rest back.
            logger.warning("relay lost the broker after %d of %d: %s", len(sent), len(claimed), exc)
            self._drop_broker()
            self.rows.mark_sent(sent, token, utcnow())
            self.rows.release([r.id for r in claimed if r.id not in sent], token)
            raise
        marked = self.rows.mark_sent(sent, token, utcnow())
        if marked < len(sent):
            logger.warning(
                "relay batch %s lost %d rows to another relay", token, len(sent) - marked
            )
        return marked

    def _publish_batch(self, claimed: Sequence[Any], token: str, sent: list[int]) -> None:
        """Publish each row and wait for the broker's confirmations once for the batch.

        Appends the ids the broker confirmed to ``sent``; broker errors propagate.
        """
        connection, publisher = self._broker()
        producer = Producer(connection.default_channel)  # type: ignore[no-untyped-call]
        declared: set[str] = set()
        with publisher.batch(producer, len(claimed)):
            for row in claimed:
                try:
                    self._publish(producer, row, declared)
                except connection.connection_errors + connection.channel_errors + BROKER_UNCERTAIN:
                    raise  # the broker's trouble, not this message's: the batch is handed back
                except Exception as exc:  # this message, not the broker
                    self._failed(row.id, row.attempts, token, f"{type(exc).__name__}: {exc}")
                else:
                    publisher.published(row.id)
        acked, nacked = publisher.confirmed()
        sent.extend(acked)
        attempts = {row.id: row.attempts for row in claimed}
        for row_id in nacked:
            self._failed(row_id, attempts[row_id], token, "the broker refused it (nack)")

    def _failed(self, row_id: int, attempts: int, token: str, error: str) -> None:
        logger.warning("outbox row %s failed to publish: %s", row_id, error)
        self.rows.mark_failed(
            row_id,
            token,
            error,
            utcnow() + backoff(attempts + 1),
            self.settings.outbox_max_attempts,
        )

    def drain(self) -> int:
        """Publish batches until nothing is due; return how many were sent."""
        total = 0
        while sent := self.run_batch():
            total += sent
        return total

    def run(self, stop: threading.Event) -> None:
        """Publish until ``stop`` is set; a batch under way is finished first.

        When idle it waits for the store's commit notifications (PostgreSQL) or polls.
        """
        idle = self.settings.relay_idle_interval.total_seconds()
        wakeup = wakeup_for(self.rows.database, self.tables, stop)
        broker_down = 0
        try:
            while not stop.is_set():
                try:
                    sent = self.run_batch()
                    broker_down = 0
                except Exception:
                    broker_down += 1
                    stop.wait(min(30.0, 0.5 * 2**broker_down))
                    continue
                if not sent:
                    wakeup.wait(idle)
        finally:
            wakeup.close()
            self.close()

    def _broker(self) -> tuple[Any, BatchPublisher]:
        """The relay's broker connection and its publisher, kept across batches."""
        if self._connection is None:
            connection = self.app.connection_for_write()
            connection.ensure_connection(max_retries=1)
            self._publisher = publisher_for(connection)
            self._connection = connection
        return self._connection, self._publisher

    def _drop_broker(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            try:
                connection.release()
            except Exception:  # already broken; the next batch connects afresh
                logger.debug("closing the broken broker connection failed", exc_info=True)

    def close(self) -> None:
        """Release the broker connection (the relay can be used again afterwards)."""
        self._drop_broker()

    def _publish(self, producer: Producer, row: Any, declared: set[str]) -> None:
        declare = []
        if row.queue and row.queue not in declared:  # as send_task does, once per batch
            declare = [self.app.amqp.queues[row.queue]]
            declared.add(row.queue)
        producer.publish(
            row.body,
            exchange=row.exchange,
            routing_key=row.routing_key,
            content_type=row.content_type,
            content_encoding=row.content_encoding,
            headers=kombu_json.loads(row.headers),  # type: ignore[no-untyped-call]
            declare=declare,
            retry=False,
            **kombu_json.loads(row.properties),  # type: ignore[no-untyped-call]
        )
