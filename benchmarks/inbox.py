"""ReliableTask against plain Celery: drain the same no-op tasks through one worker setup.

For each broker, the same N messages are queued before a real ``celery worker -P prefork
-c 2`` starts, for three variants in turn: plain Celery's defaults, plain Celery with
``acks_late``, and ``ReliableTask`` (inbox claim and completion mark in the store). The clock
starts once 5% of the queue is gone (process start-up and first connections are not
throughput) and stops when the queue is empty and nothing is in flight: Redis's unacked
hash is empty, and the reliable variant's completed rows reach N. RabbitMQ does not show
unacknowledged counts over AMQP, so there the plain variants stop at an empty queue with at
most 2 x prefetch (8) messages still running, under 0.1% of the work.
"""

from __future__ import annotations

import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import create_engine, func, inspect, select, text

from celery_reliable import Reliable

from .bench_app import TASK_NAMES, VARIANTS, create_app

ROOT = Path(__file__).resolve().parent.parent
BROKERS = {
    "redis": os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/2"),
    "rabbitmq": os.environ.get("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//"),
}
PORTS = {"redis": 6379, "rabbitmq": 5672}
STORE = os.environ.get("BENCH_DB", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
TARGETS = {"redis": 0.90, "rabbitmq": 0.65}
WARM_UP = 0.05
LOG = Path(os.environ.get("BENCH_LOG", "/tmp/celery-reliable-benchmark.log"))
POLL = 0.02


def reachable(url: str, port: int) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or port), 2):
            return True
    except OSError:
        return False


class Queue:
    """What is waiting in (and, on Redis, unacknowledged from) one broker queue."""

    def __init__(self, kind: str, url: str, name: str) -> None:
        self.kind, self.name = kind, name
        if kind == "redis":
            import redis

            self._redis = redis.Redis.from_url(url)
        else:
            from kombu import Connection

            self._connection = Connection(url)
            self._channel = self._connection.channel()

    def waiting(self) -> int:
        if self.kind == "redis":
            return int(self._redis.llen(self.name))
        return int(self._channel.queue_declare(self.name, passive=True).message_count)

    def in_flight(self) -> int:
        return int(self._redis.hlen("unacked")) if self.kind == "redis" else 0

    def delete(self) -> None:
        if self.kind == "redis":
            self._redis.delete(self.name)
            self._redis.close()
        else:
            self._channel.queue_delete(self.name)
            self._connection.close()


def wait(condition: Callable[[], bool], timeout: float, what: str) -> float:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"benchmark: timed out waiting for {what}")
        time.sleep(POLL)
    return time.perf_counter()


def drain_rate(kind: str, variant: str, count: int) -> float:
    """Queue ``count`` messages, start a worker on them, and return tasks per second."""
    prefix = f"bench{uuid.uuid4().hex[:8]}_"
    queue_name = f"q_{prefix}"
    app = create_app(BROKERS[kind], STORE, prefix, queue_name)
    reliable = Reliable.of(app)
    reliable.create_schema()
    task = app.tasks[TASK_NAMES[variant]]
    with app.producer_or_acquire() as producer:
        for _ in range(count):
            task.apply_async(producer=producer)
    queue = Queue(kind, BROKERS[kind], queue_name)
    # RabbitMQ's count lags the publisher for a moment after the last message.
    wait(lambda: queue.waiting() >= count, 60, f"all {count} messages to be queued")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "BENCH_BROKER": BROKERS[kind],
        "BENCH_DB": STORE,
        "BENCH_PREFIX": prefix,
        "BENCH_QUEUE": queue_name,
    }
    log = open(LOG, "ab")  # noqa: SIM115 (closed in finally)
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "benchmarks.bench_app",
            "worker",
            "-P",
            "prefork",
            "-c",
            "2",
            "--without-mingle",
            "--without-gossip",
            "--without-heartbeat",
            "--loglevel=WARNING",
        ],
        cwd=ROOT,
        env=env,
        start_new_session=True,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        start_depth = int(count * (1 - WARM_UP))
        started = wait(lambda: queue.waiting() <= start_depth, 120, "the worker to start")
        depth_at_start = queue.waiting()
        wait(lambda: queue.waiting() == 0 and queue.in_flight() == 0, 600, "the queue to drain")
        if variant == "reliable":
            status = reliable.tables.inbox_status
            done = select(func.count()).where(status.c.status == "completed")

            def all_completed() -> bool:
                with reliable.database.engine.connect() as conn:
                    return conn.execute(done).scalar_one() >= count

            wait(all_completed, 600, "every completion mark")
        finished = time.perf_counter()
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()
        log.close()
        queue.delete()
        reliable.database.dispose()
        _drop_tables(prefix)
    return depth_at_start / (finished - started)


def _drop_tables(prefix: str) -> None:
    engine = create_engine(STORE)
    with engine.begin() as conn:
        for name in inspect(conn).get_table_names():
            if name.startswith(prefix):
                conn.execute(text(f'DROP TABLE "{name}"'))
    engine.dispose()


def run(count: int, brokers: list[str], repeat: int) -> None:
    """Measure every variant on every reachable broker and print rates and ratios."""
    print(
        f"celery_reliable inbox benchmark: {count} no-op tasks, prefork -c 2, "
        f"store {urlsplit(STORE).scheme}, median of {repeat} (worker log: {LOG})"
    )
    print(f"{'broker':<10}{'variant':<20}{'tasks/s':>9}")
    rates: dict[tuple[str, str], float] = {}
    for kind in brokers:
        if not reachable(BROKERS[kind], PORTS[kind]):
            print(f"{kind:<10}skipped: {BROKERS[kind]} is not reachable")
            continue
        for variant in VARIANTS:
            samples = [drain_rate(kind, variant, count) for _ in range(repeat)]
            rates[kind, variant] = statistics.median(samples)
            print(f"{kind:<10}{variant:<20}{rates[kind, variant]:>9.0f}", flush=True)
    for kind in brokers:
        if (kind, "reliable") not in rates:
            continue
        ratio = rates[kind, "reliable"] / rates[kind, "plain (default)"]
        late = rates[kind, "reliable"] / rates[kind, "plain (acks_late)"]
        verdict = "PASS" if ratio >= TARGETS[kind] else "MISS"
        print(
            f"ratio {kind:<9} reliable/plain {ratio:.2f}x (target >= {TARGETS[kind]:.2f}x: "
            f"{verdict})   reliable/plain-acks-late {late:.2f}x"
        )


def add_arguments(parser: Any) -> None:
    parser.add_argument("--count", type=int, default=10_000, help="tasks per run")
    parser.add_argument("--brokers", default="redis,rabbitmq", help="comma-separated")
    parser.add_argument("--repeat", type=int, default=1, help="runs per variant (median)")
