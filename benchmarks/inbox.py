"""ReliableTask against plain Celery: drain the same tasks through one worker setup.

For each broker, the same N messages are queued in a fresh queue before a real ``celery
worker -P prefork -c 2`` starts, for seven variants in turn: two pairs and two references.

- no-op: plain Celery's defaults (and, for reference, with ``acks_late``) against
  ``ReliableTask`` (inbox claim and completion mark in the store);
- insert, as tasks are written: a plain task inserting one row through its own SQLAlchemy
  Session and committing, against a ReliableTask inserting the same row through
  ``self.transaction()`` (committed with the completion mark);
- the references (issue #15's ceilings): a plain task whose body is one INSERT committed on
  its own, synchronously (one durable round trip per task, what a completion mark needs at
  least) or asynchronously (``synchronous_commit=off``, no WAL flush waited for).

With ``--repeat K`` the variants alternate K times and the median is reported with the
spread (min-max), so that a slow phase of the machine hits all variants alike. Each drain
also reports the CPU per message of the worker's main process, its pool processes, the
database backends and the broker (see benchmarks/cpu.py), and the section prints the load
average at its start and end.

Timing, by polling the queue depth every 20 ms:

- t0 is the first poll at which the queue is below 95% of N. The first 5% of the messages
  pay for process start-up, imports and first connections, which are not throughput.
- t1 is the first poll at which the queue is empty and nothing is in flight: Redis's
  ``unacked`` hash is back to what it held before the worker started, the reliable
  variants' completed inbox rows reach N, and the inserting variants' rows reach N.
  RabbitMQ does not report unacknowledged messages over AMQP, so there the plain no-op
  variants stop at an empty queue with at most 2 x prefetch
  (8) messages still running, under 0.1% of the work.
- rate = depth at t0 / (t1 - t0): the messages still queued at t0 all finish by t1. The
  at most 8 messages prefetched at t0 are left out of the count, an error under 0.1%.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from contextlib import ExitStack, suppress
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from sqlalchemy import Select, create_engine, func, make_url, select

from celery_reliable import Reliable
from celery_reliable.testing import drop_store

from . import cpu
from .bench_app import INSERTING, REFERENCES, TASK_NAMES, VARIANTS, create_app, effects_table
from .report import Row, Target, load

ROOT = Path(__file__).resolve().parent.parent
BROKERS = {
    "redis": os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/2"),
    "rabbitmq": os.environ.get("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//"),
}
STORE = os.environ.get("BENCH_DB", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
TARGETS = {"redis": 0.90, "rabbitmq": 0.65}
#: measure -> (variant, its plain baseline, target ratio per broker), in the report's order.
PAIRS = {
    "ReliableTask vs plain Task": ("reliable", "plain (default)", TARGETS),
    "ReliableTask insert vs plain Session insert": (
        "reliable (insert)",
        "plain (insert)",
        {"redis": 0.90, "rabbitmq": 0.90},
    ),
}
DEFAULT_COUNT = 10_000
WARM_UP = 0.05
POLL = 0.02
LOG = Path(os.environ.get("BENCH_LOG", "/tmp/celery-reliable-benchmark.log"))


class Queue:
    """One broker queue: its depth, what the worker holds unacknowledged, and its removal."""

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
        """Messages not yet delivered to a consumer."""
        if self.kind == "redis":
            return int(self._redis.llen(self.name))
        return int(self._channel.queue_declare(self.name, passive=True).message_count)

    def in_flight(self) -> int:
        """Delivered, unacknowledged messages (all queues of the Redis database; 0 on AMQP)."""
        return int(self._redis.hlen("unacked")) if self.kind == "redis" else 0

    def delete(self) -> None:
        """Remove the queue and the exchange (or Redis binding) Celery declared for it."""
        if self.kind == "redis":
            bindings = (f"_kombu.binding.{self.name}", f"_kombu.binding_permanent.{self.name}")
            self._redis.delete(self.name, *bindings)
            self._redis.close()
        else:
            self._channel.queue_delete(self.name)
            self._channel.exchange_delete(self.name)
            self._connection.close()


def until(
    condition: Callable[[], bool],
    what: str,
    timeout: float,
    worker: subprocess.Popen[bytes] | None = None,
) -> float:
    """Poll ``condition`` and return the moment it held; fail fast if the worker died."""
    deadline = time.perf_counter() + timeout
    while not condition():
        if worker is not None and worker.poll() is not None:
            raise RuntimeError(f"the worker exited ({worker.returncode}) before {what}; see {LOG}")
        if time.perf_counter() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(POLL)
    return time.perf_counter()


@dataclass(frozen=True)
class Drain:
    """One drain: tasks per second, and CPU microseconds per message by process class."""

    rate: float
    cpu: dict[str, float]


def drain(kind: str, variant: str, count: int) -> Drain:
    """Queue ``count`` messages, start a worker on them, and measure the drain."""
    prefix = f"bench{uuid.uuid4().hex[:8]}_"
    queue_name = f"q_{prefix}"
    app = create_app(BROKERS[kind], STORE, prefix, queue_name)
    reliable = Reliable.of(app)
    with ExitStack() as cleanup:
        # Registered first, so they run last, whatever fails before or after.
        cleanup.callback(drop_tables, prefix)
        cleanup.callback(reliable.database.dispose)
        reliable.create_schema()
        effects = effects_table(prefix)
        effects.create(reliable.database.engine)
        queue = Queue(kind, BROKERS[kind], queue_name)
        cleanup.callback(queue.delete)
        task = app.tasks[TASK_NAMES[variant]]
        with app.producer_or_acquire() as producer:
            for _ in range(count):
                task.apply_async(producer=producer)
        # RabbitMQ's count lags the publisher for a moment after the last message.
        until(lambda: queue.waiting() >= count, f"all {count} messages to be queued", 60)
        in_flight_before = queue.in_flight()  # Redis: left over by an earlier killed worker
        worker = start_worker(cleanup, prefix, queue_name, BROKERS[kind])

        depth = count
        start_depth = int(count * (1 - WARM_UP))

        def warmed_up() -> bool:
            nonlocal depth
            depth = queue.waiting()
            return depth <= start_depth

        def processes() -> cpu.Snapshot:
            backends = cpu.postgres_pids(reliable.database.engine, prefix)
            return cpu.snapshot(worker.pid, kind, backends)

        started = until(warmed_up, "the worker to start consuming", 120, worker)
        at_start = processes()
        remaining = depth

        def drained() -> bool:
            return queue.waiting() == 0 and queue.in_flight() <= in_flight_before

        finished = until(drained, "the queue to drain", 600, worker)
        status = reliable.tables.inbox_status
        waits: list[tuple[str, Select[Any]]] = []
        if variant.startswith("reliable"):
            completed = select(func.count()).where(status.c.status == "completed")
            waits.append(("every completion mark", completed))
        if variant in INSERTING:
            waits.append(("every row", select(func.count()).select_from(effects)))
        for what, query in waits:
            finished = until(partial(reaches, reliable, query, count), what, 600, worker)
        used = cpu.per_message(at_start, processes(), remaining)
    return Drain(remaining / (finished - started), used)


def reaches(reliable: Reliable, query: Select[Any], count: int) -> bool:
    """Whether the store's count ``query`` is at least ``count``."""
    with reliable.database.engine.connect() as conn:
        return int(conn.execute(query).scalar_one()) >= count


def start_worker(
    cleanup: ExitStack, prefix: str, queue_name: str, broker: str
) -> subprocess.Popen[bytes]:
    """Start ``celery worker -P prefork -c 2`` on the queue; ``cleanup`` stops it.

    The node name is unique so that the worker's remote-control queue (exclusive on
    RabbitMQ) cannot collide with another worker's on the same virtual host.
    """
    log = cleanup.enter_context(LOG.open("ab"))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "BENCH_BROKER": broker,
        "BENCH_DB": labelled(STORE, prefix),
        "BENCH_PREFIX": prefix,
        "BENCH_QUEUE": queue_name,
    }
    command = [sys.executable, "-m", "celery", "-A", "benchmarks.bench_app", "worker"]
    command += ["-P", "prefork", "-c", "2", "-Q", queue_name, "-n", f"{prefix}@%h"]
    command += ["--without-mingle", "--without-gossip", "--without-heartbeat"]
    command += ["--loglevel=WARNING"]
    worker = subprocess.Popen(
        command, cwd=ROOT, env=env, start_new_session=True, stdout=log, stderr=subprocess.STDOUT
    )
    cleanup.callback(stop_worker, worker)
    return worker


def labelled(url: str, name: str) -> str:
    """``url`` with PostgreSQL's ``application_name``, so the run's backends can be found."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql":
        return url
    return parsed.update_query_dict({"application_name": name}).render_as_string(
        hide_password=False
    )


def stop_worker(worker: subprocess.Popen[bytes]) -> None:
    """Warm shutdown (SIGTERM); after 30 s, SIGKILL the worker's whole process group."""
    worker.terminate()
    try:
        worker.wait(30)
    except subprocess.TimeoutExpired:
        with suppress(ProcessLookupError):
            os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()


def drop_tables(prefix: str) -> None:
    """Drop every table of this run, and the outbox trigger's function (PostgreSQL)."""
    drop_store(STORE, prefix)


def unreachable(kind: str) -> str | None:
    """Why ``kind`` (a broker, or "store") cannot be used, or None when it answers."""
    try:
        if kind == "store":
            engine = create_engine(STORE)
            try:
                with engine.connect():
                    pass
            finally:
                engine.dispose()
        elif kind == "redis":
            import redis

            redis.Redis.from_url(BROKERS[kind], socket_connect_timeout=2).ping()
        else:
            from kombu import Connection

            with Connection(BROKERS[kind], connect_timeout=2) as conn:
                conn.connect()
    except Exception as exc:  # any failure to connect is reported, not raised
        return f"{type(exc).__name__}: {exc}".splitlines()[0]
    return None


def run(count: int | None, brokers: list[str], repeat: int) -> list[Row]:
    """Measure every variant on every usable broker; print rates, CPU and ratios; return rows."""
    count = count or DEFAULT_COUNT
    LOG.write_bytes(b"")
    print(
        f"celery_reliable inbox benchmark: {count} tasks, prefork -c 2, "
        f"store {make_url(STORE).get_backend_name()}, median of {repeat} (min-max), "
        f"load average {load()} (worker log: {LOG})"
    )
    problem = unreachable("store")
    if problem is not None:
        print(f"skipped: the store {STORE} is unreachable ({problem})")
        return []
    print(f"{'broker':<10}{'variant':<20}{'tasks/s':>8}  spread")
    drains: dict[str, dict[str, list[Drain]]] = {}
    for kind in brokers:
        problem = unreachable(kind)
        if problem is not None:
            print(f"{kind:<10}skipped: {BROKERS[kind]} is unreachable ({problem})")
            continue
        samples: dict[str, list[Drain]] = {variant: [] for variant in VARIANTS}
        try:
            for _ in range(repeat):
                for variant in VARIANTS:
                    samples[variant].append(drain(kind, variant, count))
        except Exception as exc:  # a report, not a test: say what failed and go on
            print(f"{kind:<10}skipped: {type(exc).__name__}: {exc}")
            continue
        drains[kind] = samples
        for variant, runs in samples.items():
            rates = [run.rate for run in runs]
            spread = f"{min(rates):.0f}-{max(rates):.0f}"
            print(f"{kind:<10}{variant:<20}{statistics.median(rates):>8.0f}  {spread}", flush=True)
    print_cpu(drains)
    rows: list[Row] = []
    for kind, samples in drains.items():
        rate = {
            variant: statistics.median(run.rate for run in runs)
            for variant, runs in samples.items()
        }
        late = rate["reliable"] / rate["plain (acks_late)"]
        print(f"ratio  {kind:<9} reliable/plain-acks-late {late:.2f}x (no-op, for reference)")
        for variant, what in REFERENCES.items():
            ceiling = rate[variant] / rate["plain (default)"]
            print(f"ratio  {kind:<9} {variant}/plain (default) {ceiling:.2f}x (ceiling: {what})")
            rows.append(
                Row(
                    f"inbox {kind}: ceiling, {what}",
                    rate[variant],
                    "/s",
                    rate["plain (default)"],
                    "plain (default)",
                )
            )
        for measure, (variant, baseline, targets) in PAIRS.items():
            ratio = rate[variant] / rate[baseline]
            verdict = "PASS" if ratio >= targets[kind] else "MISS"
            print(
                f"ratio  {kind:<9} {variant}/{baseline} {ratio:.2f}x "
                f"(target >= {targets[kind]:.2f}x: {verdict})"
            )
            rows.append(
                Row(
                    f"inbox {kind}: {measure}",
                    rate[variant],
                    "/s",
                    rate[baseline],
                    baseline,
                    Target("ratio", ">=", targets[kind]),
                )
            )
    print(f"inbox benchmark done, load average {load()}")
    return rows


def print_cpu(drains: dict[str, dict[str, list[Drain]]]) -> None:
    """CPU µs per message by process class: medians, and the spread of the total."""
    if not drains:
        return
    print("CPU per message, µs (median; db aux and broker also serve the rest of the machine)")
    print(f"{'broker':<10}{'variant':<20}" + "".join(f"{c:>12}" for c in (*cpu.CLASSES, "total")))
    for kind, samples in drains.items():
        for variant, runs in samples.items():
            median = {
                c: statistics.median(run.cpu[c] for run in runs) for c in (*cpu.CLASSES, "total")
            }
            totals = [run.cpu["total"] for run in runs]
            cells = "".join(f"{median[c]:>12.0f}" for c in (*cpu.CLASSES, "total"))
            print(f"{kind:<10}{variant:<20}{cells}  ({min(totals):.0f}-{max(totals):.0f})")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """This benchmark's options."""
    parser.add_argument(
        "--count",
        type=at_least(100),
        default=None,
        help="messages (rows, entries) per run; default: each benchmark's own",
    )
    parser.add_argument(
        "--brokers",
        type=broker_list,
        default=list(BROKERS),
        help=f"comma-separated, from {','.join(BROKERS)} (default: all)",
    )
    parser.add_argument("--repeat", type=at_least(1), default=1, help="runs per variant (median)")


def at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer no smaller than ``minimum``."""

    def integer(value: str) -> int:
        number = int(value)
        if number < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}")
        return number

    return integer


def broker_list(value: str) -> list[str]:
    """An argparse type: known broker names, comma-separated."""
    names = [name for name in value.split(",") if name]
    unknown = sorted(set(names) - set(BROKERS))
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"choose from {','.join(BROKERS)}, not {value!r}")
    return names
