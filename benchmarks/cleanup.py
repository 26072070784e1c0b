"""Retention cleanup in batches, against one raw DELETE of the same rows.

For each store (PostgreSQL; MariaDB too when it answers), N sent outbox rows older than the
retention are written, then ``reliable.maintenance.cleanup()`` deletes them in batches of
10,000 (``reliable_cleanup_batch_size``), each batch its own transaction, as beat runs it.
Baseline, in the same run: the same rows written again and removed by one ``DELETE ...
WHERE status = 'sent' AND sent_at < cutoff`` in one transaction, the fastest a database
can do it and what batching gives up to keep transactions short. Target (issue #7):
>= 80,000 rows/s.
"""

from __future__ import annotations

import os
import statistics
import time
import uuid
from datetime import timedelta

from celery import Celery
from sqlalchemy import and_, create_engine, delete, func, insert, make_url, select

from celery_reliable import Reliable
from celery_reliable.clock import utcnow
from celery_reliable.testing import drop_store

from .inbox import STORE
from .report import Row, Target

DEFAULT_COUNT = 200_000
BATCH = 10_000
TARGET = Target("value", ">=", 80_000)
STORES = {
    "postgresql": STORE,
    "mariadb": os.environ.get("BENCH_MYSQL_URL", "mysql+pymysql://root@127.0.0.1:3306/test"),
}
INSERT_CHUNK = 10_000


def _reliable(url: str, prefix: str) -> Reliable:
    app = Celery("bench_cleanup", broker="memory://", set_as_current=False)
    app.conf.update(
        reliable_database_url=url,
        reliable_table_prefix=prefix,
        reliable_cleanup_batch_size=BATCH,
        reliable_outbox_retention="1d",
    )
    return Reliable(app)


def fill(reliable: Reliable, count: int) -> None:
    """``count`` outbox rows sent two days ago: past the one-day retention."""
    sent_at = utcnow() - timedelta(days=2)
    body = b'[[0], {}, {"callbacks": null, "errbacks": null, "chain": null, "chord": null}]'
    template = {
        "task_id": "",
        "task_name": "bench.cleaned",
        "queue": "celery",
        "exchange": "",
        "routing_key": "celery",
        "body": body,
        "content_type": "application/json",
        "content_encoding": "utf-8",
        "headers": "{}",
        "properties": '{"delivery_mode": 2}',
        "status": "sent",
        "attempts": 0,
        "created_at": sent_at,
        "available_at": sent_at,
        "sent_at": sent_at,
    }
    outbox = reliable.tables.outbox
    for start in range(0, count, INSERT_CHUNK):
        rows = [
            {**template, "message_id": f"c-{n}", "task_id": f"c-{n}"}
            for n in range(start, min(start + INSERT_CHUNK, count))
        ]
        with reliable.database.engine.begin() as conn:
            conn.execute(insert(outbox), rows)


def batched(reliable: Reliable, count: int) -> float:
    """``maintenance.cleanup`` over ``count`` expired rows: rows/s."""
    started = time.perf_counter()
    report = reliable.maintenance.cleanup(locked=False)
    elapsed = time.perf_counter() - started
    if report.counts.get("outbox_sent") != count:
        raise RuntimeError(f"cleanup deleted {report.counts}, expected {count} outbox rows")
    return count / elapsed


def one_delete(reliable: Reliable, count: int) -> float:
    """The same rows removed by one DELETE in one transaction: rows/s."""
    outbox = reliable.tables.outbox
    cutoff = utcnow() - timedelta(days=1)
    started = time.perf_counter()
    with reliable.database.engine.begin() as conn:
        deleted = conn.execute(
            delete(outbox).where(and_(outbox.c.status == "sent", outbox.c.sent_at < cutoff))
        ).rowcount
    elapsed = time.perf_counter() - started
    if deleted != count:
        raise RuntimeError(f"the raw DELETE removed {deleted} rows, expected {count}")
    return count / elapsed


def measure(url: str, count: int) -> tuple[float, float]:
    """(batched rows/s, one-DELETE rows/s) on a fresh table, each on freshly written rows."""
    prefix = f"benchc{uuid.uuid4().hex[:8]}_"
    reliable = _reliable(url, prefix)
    try:
        reliable.create_schema()
        fill(reliable, count)
        rate = batched(reliable, count)
        fill(reliable, count)
        raw = one_delete(reliable, count)
        with reliable.database.engine.connect() as conn:  # nothing left behind by either
            assert conn.scalar(select(func.count()).select_from(reliable.tables.outbox)) == 0
        return rate, raw
    finally:
        reliable.database.dispose()
        drop_store(url, prefix)


def unreachable(url: str) -> str | None:
    """Why the store at ``url`` cannot be used, or None when it answers."""
    engine = create_engine(url)
    try:
        with engine.connect():
            return None
    except Exception as exc:  # any failure to connect is reported, not raised
        return f"{type(exc).__name__}: {exc}".splitlines()[0]
    finally:
        engine.dispose()


def run(count: int | None, brokers: list[str], repeat: int) -> list[Row]:
    """Cleanup throughput per store (median of ``repeat``); brokers play no part here."""
    count = count or DEFAULT_COUNT
    print(f"\ncelery_reliable retention cleanup benchmark: {count} rows, batches of {BATCH}")
    rows = []
    for name, url in STORES.items():
        if reason := unreachable(url):
            print(f"cleanup {name}: skipped: {make_url(url).render_as_string()} ({reason})")
            continue
        runs = [measure(url, count) for _ in range(repeat)]
        rate, raw = (statistics.median(column) for column in zip(*runs, strict=True))
        print(f"cleanup {name}: {rate:,.0f} rows/s in batches; one DELETE {raw:,.0f} rows/s")
        rows.append(
            Row(f"cleanup {name}: rows/s in 10k batches", rate, "/s", raw, "1 DELETE", TARGET)
        )
    return rows
