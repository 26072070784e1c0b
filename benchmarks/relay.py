"""The relay against the raw limit and against Celery's own publishing, in one run.

For each broker, the same N outbox rows (enqueued through ``reliable.outbox``) are moved
three ways, each timed from the first claim to the last mark:

- **raw loop**: what a minimal relay can do. It claims 500 rows in one transaction
  (``FOR UPDATE SKIP LOCKED``), pushes the stored bodies (pipelined LPUSH on Redis; one
  confirm wait per batch on RabbitMQ) and marks them sent. The messages are bare bytes,
  not consumable Celery messages: this is the ceiling, not a competitor;
- **relay**: ``reliable.relay.drain()``, real Celery messages with confirms;
- **apply_async**: Celery's own loop publishing the same number of messages, with no
  store.

Also the commit-to-broker latency (p50/p99) of single-message transactions with a running
relay. Targets (issue #7: relay >= 0.8x the raw loop; latency p50 <= 10 ms, p99 <= 100 ms)
go into the report's table.

With ``--rows N`` it measures memory instead: N rows are enqueued, then a child process
(so that the filling's memory is not counted) drains them with ``reliable.relay.drain()``
and samples its resident set size after every batch. A thread of the parent empties the
queue meanwhile, so that the broker does not hold N messages. The relay's memory must not
grow with the rows it has moved: the report shows the RSS as the drain progresses and its
peak.
"""

from __future__ import annotations

import contextlib
import functools
import json
import resource
import statistics
import subprocess
import sys
import threading
import time
import uuid
from typing import Any

from sqlalchemy import insert, select, update

from celery_reliable import Reliable

from .inbox import BROKERS, ROOT, STORE, drop_tables, unreachable
from .report import Row, Target

BATCH = 500
FILL_CHUNK = 5000
DEFAULT_COUNT = 10_000

RELAY_TARGET = Target("ratio", ">=", 0.80)
P50_TARGET = Target("value", "<=", 10)
P99_TARGET = Target("value", "<=", 100)


def _app(kind: str, prefix: str) -> Any:
    from celery import Celery

    app = Celery("bench_relay", broker=BROKERS[kind], set_as_current=False)
    app.conf.update(
        task_default_queue=f"q_{prefix}",
        reliable_database_url=STORE,
        reliable_table_prefix=prefix,
        reliable_relay_batch_size=BATCH,
        broker_connection_retry_on_startup=True,
    )
    Reliable(app)

    @app.task(name="bench.noop", shared=False)
    def noop(n: int) -> None:
        """Never runs: nothing consumes in this benchmark."""

    return app


def _fresh(kind: str, stem: str) -> tuple[Any, Reliable, str, str]:
    """An app on ``kind`` with new outbox tables: (app, reliable, table prefix, queue name)."""
    prefix = f"{stem}{uuid.uuid4().hex[:8]}_"
    app = _app(kind, prefix)
    reliable = Reliable.of(app)
    reliable.create_schema()
    return app, reliable, prefix, f"q_{prefix}"


def _fill(reliable: Any, task: Any, count: int) -> None:
    with reliable.database.engine.begin() as conn:
        for n in range(count):
            reliable.outbox.enqueue(conn, task.s(n))


def _reset(reliable: Any, queue: Any) -> None:
    t = reliable.tables.outbox
    with reliable.database.engine.begin() as conn:
        conn.execute(update(t).values(status="pending", claim_token=None, sent_at=None))
    queue()


def _raw_loop(kind: str, reliable: Any, queue_name: str) -> float:
    t = reliable.tables.outbox
    claim = (
        select(t.c.id, t.c.body)
        .where(t.c.status == "pending")
        .order_by(t.c.id)
        .limit(BATCH)
        .with_for_update(skip_locked=True)
    )
    push = _raw_pusher(kind, queue_name)
    moved, started = 0, time.perf_counter()
    while True:
        with reliable.database.engine.begin() as conn:
            rows = conn.execute(claim).all()
            if not rows:
                break
            push([row.body for row in rows])
            conn.execute(update(t).where(t.c.id.in_([r.id for r in rows])).values(status="sent"))
        moved += len(rows)
    return moved / (time.perf_counter() - started)


def _raw_pusher(kind: str, queue_name: str) -> Any:
    if kind == "redis":
        import redis

        client = redis.Redis.from_url(BROKERS[kind])

        def push_redis(bodies: list[bytes]) -> None:
            pipe = client.pipeline(transaction=False)
            for body in bodies:
                pipe.lpush(queue_name, body)
            pipe.execute()

        return push_redis
    import amqp

    parts = BROKERS[kind].split("//", 1)[1].split("@")
    user, password = parts[0].split(":")
    connection = amqp.Connection(parts[1].rstrip("/"), userid=user, password=password)
    connection.connect()
    channel = connection.channel()
    channel.queue_declare(queue_name, durable=True, auto_delete=False)
    channel.confirm_select()
    state = {"published": 0, "acked": 0}

    def on_ack(tag: int, multiple: bool) -> None:
        state["acked"] = max(state["acked"], tag) if multiple else state["acked"] + 1

    channel.events["basic_ack"].add(on_ack)

    def push_amqp(bodies: list[bytes]) -> None:
        for body in bodies:
            channel.basic_publish(amqp.Message(body, delivery_mode=2), "", queue_name)
        state["published"] += len(bodies)
        while state["acked"] < state["published"]:  # one wait per batch, not per message
            connection.drain_events(timeout=30)

    return push_amqp


def _purge(app: Any, queue_name: str) -> None:
    with app.connection_for_write() as conn, contextlib.suppress(Exception):  # not declared yet
        conn.default_channel.queue_purge(queue_name)


def _apply_async_loop(app: Any, count: int) -> float:
    task = app.tasks["bench.noop"]
    started = time.perf_counter()
    with app.producer_or_acquire() as producer:
        for n in range(count):
            task.apply_async((n,), producer=producer)
    return count / (time.perf_counter() - started)


def _latency(kind: str, reliable: Any, task: Any, queue_name: str, samples: int) -> list[float]:
    """ms from commit to the message being on the broker, with a running relay."""
    stop = threading.Event()
    relay = threading.Thread(target=reliable.relay.run, args=(stop,))
    relay.start()
    seen: dict[str, float] = {}
    probe = _arrivals(kind, queue_name, seen, samples)
    committed: dict[str, float] = {}
    time.sleep(0.5)  # let the relay LISTEN before the first commit
    for n in range(samples):
        with reliable.database.engine.begin() as conn:
            reliable.outbox.enqueue(conn, task.s(n), message_id=f"lat-{n}")
        committed[f"lat-{n}"] = time.perf_counter()
        time.sleep(0.005)
    probe.join(60)
    stop.set()
    relay.join(30)
    return sorted((seen[k] - committed[k]) * 1000 for k in committed if k in seen)


def _arrivals(kind: str, queue_name: str, seen: dict[str, float], samples: int) -> Any:
    def watch_redis() -> None:
        import redis

        client = redis.Redis.from_url(BROKERS[kind])
        while len(seen) < samples and (item := client.brpop(queue_name, timeout=10)):
            seen[json.loads(item[1])["headers"]["reliable_message_id"]] = time.perf_counter()

    def watch_amqp() -> None:
        from kombu import Connection

        with Connection(BROKERS[kind]) as conn:
            channel = conn.channel()
            deadline = time.monotonic() + 60
            while len(seen) < samples and time.monotonic() < deadline:
                message = channel.basic_get(queue_name, no_ack=True)
                if message is None:
                    time.sleep(0.0005)
                    continue
                seen[message.headers["reliable_message_id"]] = time.perf_counter()

    thread = threading.Thread(target=watch_redis if kind == "redis" else watch_amqp)
    thread.start()
    return thread


def run(count: int | None, brokers: list[str], repeat: int) -> list[Row]:
    """The relay against the raw loop and apply_async, and commit-to-broker latency, as rows."""
    count = count or DEFAULT_COUNT
    print(
        f"\ncelery_reliable relay benchmark: {count} messages, batches of {BATCH}, store postgresql"
    )
    rows: list[Row] = []
    for kind in brokers:
        if reason := unreachable(kind):
            print(f"relay {kind}: skipped: {reason}")
            continue
        app, reliable, prefix, queue_name = _fresh(kind, "benchr")
        purge = functools.partial(_purge, app, queue_name)
        try:
            _fill(reliable, app.tasks["bench.noop"], count)
            raw, relayed, published = [], [], []
            for _ in range(repeat):
                _reset(reliable, purge)
                raw.append(_raw_loop(kind, reliable, queue_name))
                _reset(reliable, purge)
                started = time.perf_counter()
                moved = reliable.relay.drain()
                relayed.append(moved / (time.perf_counter() - started))
                purge()
                published.append(_apply_async_loop(app, count))
            purge()
            latency = _latency(kind, reliable, app.tasks["bench.noop"], queue_name, min(200, count))
        finally:
            reliable.relay.close()
            purge()
            reliable.database.dispose()
            drop_tables(prefix)
        raw_rate, rate, apply_rate = (statistics.median(x) for x in (raw, relayed, published))
        p50 = statistics.median(latency)
        p99 = latency[max(0, int(len(latency) * 0.99) - 1)]
        print(
            f"relay {kind}: raw loop {raw_rate:,.0f}/s, relay {rate:,.0f}/s, "
            f"apply_async {apply_rate:,.0f}/s, commit->broker p50 {p50:.1f} ms, p99 {p99:.1f} ms",
            flush=True,
        )
        rows += [
            Row(f"relay {kind}: relay vs raw loop", rate, "/s", raw_rate, "raw", RELAY_TARGET),
            Row(f"relay {kind}: relay vs apply_async", rate, "/s", apply_rate, "apply_async"),
            Row(f"relay {kind}: commit->broker p50", p50, " ms", target=P50_TARGET),
            Row(f"relay {kind}: commit->broker p99", p99, " ms", target=P99_TARGET),
        ]
    return rows


def memory(rows: int, brokers: list[str]) -> None:
    """Drain ``rows`` outbox rows in a child process and report its memory as it goes."""
    print(f"\ncelery_reliable relay memory: draining {rows} rows, batches of {BATCH}")
    for kind in brokers:
        if reason := unreachable(kind):
            print(f"{kind:<10}skipped: {reason}")
            continue
        app, reliable, prefix, queue_name = _fresh(kind, "benchm")
        stop = threading.Event()
        sink = threading.Thread(target=_empty_queue, args=(app, queue_name, stop))
        try:
            started = time.perf_counter()
            _fill_in_chunks(reliable, app.tasks["bench.noop"], rows)
            print(f"{kind}: filled in {time.perf_counter() - started:.0f} s", flush=True)
            sink.start()
            child = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    f"from benchmarks.relay import _drain; _drain({kind!r}, {prefix!r})",
                ],
                cwd=ROOT,
                capture_output=True,
                text=True,
                check=True,
            )
            _report(kind, json.loads(child.stdout.splitlines()[-1]))
        finally:
            stop.set()
            if sink.is_alive():
                sink.join()
            purge = functools.partial(_purge, app, queue_name)
            purge()
            reliable.database.dispose()
            drop_tables(prefix)


def _fill_in_chunks(reliable: Any, task: Any, count: int) -> None:
    """Rows as ``enqueue`` writes them, inserted many per statement (faster to fill)."""
    for start in range(0, count, FILL_CHUNK):
        chunk = [
            reliable.outbox.build_row(task.s(n), None, None, None, None, {})
            for n in range(start, min(count, start + FILL_CHUNK))
        ]
        with reliable.database.engine.begin() as conn:
            conn.execute(insert(reliable.tables.outbox), chunk)


def _empty_queue(app: Any, queue_name: str, stop: threading.Event) -> None:
    while not stop.wait(0.5):
        _purge(app, queue_name)


def _drain(kind: str, prefix: str) -> None:
    """The child: drain every row, sampling this process's RSS after each batch."""
    reliable = Reliable.of(_app(kind, prefix))
    samples: list[tuple[int, float]] = [(0, _rss_mb())]

    def sample(claimed: int) -> None:
        samples.append((samples[-1][0] + claimed, _rss_mb()))

    started = time.perf_counter()
    sent = reliable.relay.drain(sample)
    seconds = time.perf_counter() - started
    reliable.relay.close()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(json.dumps({"sent": sent, "seconds": seconds, "samples": samples, "maxrss": peak}))


def _rss_mb() -> float:
    """Resident set size now (Linux: /proc/self/statm, in pages)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / 2**20


def _report(kind: str, result: dict[str, Any]) -> None:
    samples = result["samples"]
    total = samples[-1][0]
    print(
        f"{kind}: {result['sent']} sent in {result['seconds']:.0f} s "
        f"({result['sent'] / result['seconds']:.0f}/s); RSS as the drain progresses:"
    )
    marks = [samples[0]] + [
        next(s for s in samples if s[0] >= total * share / 10) for share in range(1, 11)
    ]
    print("  " + "  ".join(f"{moved:>8}: {rss:.1f} MB" for moved, rss in marks[:6]))
    print("  " + "  ".join(f"{moved:>8}: {rss:.1f} MB" for moved, rss in marks[6:]))
    after_first = [rss for moved, rss in samples if moved >= total / 10]
    print(
        f"  peak RSS sampled after each of {len(samples) - 1} batches: "
        f"{max(rss for _, rss in samples):.1f} MB (ru_maxrss {result['maxrss']:.1f} MB); "
        f"growth from 10% to the end: {max(after_first) - after_first[0]:+.1f} MB"
    )
