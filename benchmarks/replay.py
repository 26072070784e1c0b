"""Dead-letter replay through the outbox and the relay, against a raw push of as many messages.

For each broker, N dead-letter entries of a ReliableTask (each with its quarantined inbox
row, as a poisoned message leaves them) are replayed with
``reliable.dead_letters.replay_batch()`` while a relay process (``reliable.relay.run``, as
``celery reliable relay`` runs it) publishes them with confirms. Timed from the start of
the replay to the last row marked sent, so the figure is entries on the broker per second,
what an operator waits for.

Baseline, in the same run: the same number of message bodies pushed to the broker by
benchmarks/relay.py's raw pusher (pipelined LPUSH on Redis; one confirm wait per 500 on
RabbitMQ), with no store at all. Targets (issue #7): >= 20,000 entries/s to Redis,
>= 3,500/s to RabbitMQ.
"""

from __future__ import annotations

import json
import multiprocessing
import statistics
import time
import uuid
from datetime import timedelta
from typing import Any

from celery import Celery
from sqlalchemy import func, insert, select

from celery_reliable import DeadLetterReason, Reliable, ReliableTask
from celery_reliable.clock import utcnow

from . import relay
from .inbox import BROKERS, STORE, Queue, drop_tables, unreachable, until
from .report import Row, Target

DEFAULT_COUNT = 20_000
TARGETS = {"redis": 20_000.0, "rabbitmq": 3_500.0}
TASK = "bench.replayed"
INSERT_CHUNK = 5_000


def _app(kind: str, prefix: str) -> Celery:
    app = Celery("bench_replay", broker=BROKERS[kind], set_as_current=False)
    app.conf.update(
        task_default_queue=f"q_{prefix}",
        reliable_database_url=STORE,
        reliable_table_prefix=prefix,
        broker_connection_retry_on_startup=True,
    )
    Reliable(app)

    @app.task(name=TASK, base=ReliableTask, shared=False)
    def replayed(n: int) -> None:
        """Never runs: nothing consumes in this benchmark."""

    return app


def fill(reliable: Reliable, count: int, queue_name: str) -> None:
    """``count`` dead letters, each with the poisoned inbox row its failure left behind."""
    now = utcnow()
    seen = now - timedelta(minutes=5)
    for start in range(0, count, INSERT_CHUNK):
        ids = [f"replay-{n}" for n in range(start, min(start + INSERT_CHUNK, count))]
        letters = [
            {
                "message_id": message_id,
                "task_id": message_id,
                "task_name": TASK,
                "handler_key": TASK,
                "args": f"[{n}]",
                "kwargs": "{}",
                "headers": json.dumps({"reliable_message_id": message_id, "custom": "kept"}),
                "delivery_info": json.dumps({"routing_key": queue_name, "exchange": ""}),
                "reason": DeadLetterReason.MAX_RETRIES_EXCEEDED.value,
                "exception_type": "ConnectionError",
                "exception_message": "payment gateway unreachable",
                "traceback": "Traceback (most recent call last): ...",
                "failure_group": "ConnectionError @ billing.py:charge",
                "attempts": 3,
                "first_seen_at": seen,
                "dead_lettered_at": now,
                "hostname": "worker-1",
                "replay_count": 0,
            }
            for n, message_id in enumerate(ids, start)
        ]
        statuses = [
            {
                "message_id": message_id,
                "handler_key": TASK,
                "status": "poisoned",
                "attempts": 3,
                "version": 3,
                "last_error": "ConnectionError: payment gateway unreachable",
            }
            for message_id in ids
        ]
        tables = reliable.tables
        with reliable.database.engine.begin() as conn:
            conn.execute(insert(tables.dead_letter), letters)
            conn.execute(
                insert(tables.inbox_message),
                [{"message_id": m, "task_name": TASK, "first_seen_at": seen} for m in ids],
            )
            conn.execute(insert(tables.inbox_status), statuses)
    analyze(reliable)


def analyze(reliable: Reliable) -> None:
    """Table statistics, as autovacuum gathers them within a minute of a large insert.

    Without any, PostgreSQL takes the freshly filled tables for nearly empty: each chunk's
    query (``id`` in a range, ``reason``, ``replay_count``) then reads every remaining
    entry through a bitmap and sorts them, instead of walking the primary key for 500:
    that costs about 20 us per entry over 20,000 and grows with the backlog.
    """
    if reliable.database.dialect != "postgresql":
        return
    tables = reliable.tables
    with reliable.database.autocommit.connect() as conn:
        for table in (tables.dead_letter, tables.inbox_status, tables.inbox_message):
            conn.exec_driver_sql(f"ANALYZE {table.name}")


def _relay_process(kind: str, prefix: str, stop: Any) -> None:
    """A relay of its own, as deployed (``celery reliable relay``), in a forked process."""
    reliable = Reliable.of(_app(kind, prefix))
    try:
        reliable.relay.run(stop)
    finally:
        reliable.relay.close()


def replay_to_broker(kind: str, prefix: str, reliable: Reliable, count: int) -> tuple[float, ...]:
    """Replay every entry while a relay process publishes: (entries/s, replay s, total s).

    The relay runs beside the replay, as in production, so the two overlap; the clock
    stops when the last row is marked sent (published and confirmed).
    """
    context = multiprocessing.get_context("fork")
    stop = context.Event()
    relay_process = context.Process(target=_relay_process, args=(kind, prefix, stop))
    reliable.database.dispose()  # the child makes its own connections
    relay_process.start()
    try:
        started = time.perf_counter()
        replayed = reliable.dead_letters.replay_batch(reason=DeadLetterReason.MAX_RETRIES_EXCEEDED)
        enqueued = time.perf_counter()
        if replayed != count:
            raise RuntimeError(f"replayed {replayed} of {count} entries")
        outbox = reliable.tables.outbox
        sent = select(func.count()).where(outbox.c.status == "sent")

        def all_sent() -> bool:
            with reliable.database.engine.connect() as conn:
                return conn.scalar(sent) == count

        finished = until(all_sent, "the relay to publish every replayed entry", 600)
    finally:
        stop.set()
        relay_process.join(60)
    return count / (finished - started), enqueued - started, finished - started


def raw_push(kind: str, reliable: Reliable, queue_name: str) -> float:
    """The stored bodies pushed to the broker in batches of 500, no store: messages/s."""
    outbox = reliable.tables.outbox
    with reliable.database.engine.connect() as conn:
        bodies = list(conn.scalars(select(outbox.c.body)))
    push = relay._raw_pusher(kind, queue_name)
    started = time.perf_counter()
    for start in range(0, len(bodies), relay.BATCH):
        push(bodies[start : start + relay.BATCH])
    return len(bodies) / (time.perf_counter() - started)


def measure(kind: str, count: int) -> tuple[float, float, float, float]:
    """One run on a fresh store and queues: (rate, replay s, total s, raw push rate)."""
    prefix = f"benchp{uuid.uuid4().hex[:8]}_"
    queue_name, raw_queue = f"q_{prefix}", f"raw_{prefix}"
    app = _app(kind, prefix)
    reliable = Reliable.of(app)
    queues: list[Any] = []
    try:
        reliable.create_schema()
        fill(reliable, count, queue_name)
        rate, replay_seconds, total_seconds = replay_to_broker(kind, prefix, reliable, count)
        queues.append(Queue(kind, BROKERS[kind], queue_name))
        raw = raw_push(kind, reliable, raw_queue)
        queues.append(Queue(kind, BROKERS[kind], raw_queue))
        return rate, replay_seconds, total_seconds, raw
    finally:
        reliable.relay.close()
        for queue in queues:
            queue.delete()
        reliable.database.dispose()
        drop_tables(prefix)


def run(count: int | None, brokers: list[str], repeat: int) -> list[Row]:
    """Replay throughput per broker (median of ``repeat`` runs) beside the raw push."""
    count = count or DEFAULT_COUNT
    print(f"\ncelery_reliable dead-letter replay benchmark: {count} entries, store postgresql")
    rows = []
    for kind in brokers:
        if reason := unreachable(kind):
            print(f"replay {kind}: skipped: {reason}")
            continue
        runs = [measure(kind, count) for _ in range(repeat)]
        medians = (statistics.median(column) for column in zip(*runs, strict=True))
        rate, replay_s, total_s, raw = medians
        print(
            f"replay {kind}: {rate:,.0f} entries/s to the broker; replay_batch alone took "
            f"{replay_s:.2f} s of {total_s:.2f} s ({count / replay_s:,.0f}/s); "
            f"raw push {raw:,.0f}/s",
            flush=True,
        )
        rows.append(
            Row(
                f"replay {kind}: dead letters -> broker",
                rate,
                "/s",
                raw,
                "raw push",
                Target("value", ">=", TARGETS[kind]),
            )
        )
    return rows
