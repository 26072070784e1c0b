"""The relay's figures as report rows, measured by benchmarks/relay.py's own functions.

``python -m benchmarks relay`` and the combined run use this; benchmarks/relay.py's
``run`` prints the same measurements as its own section.
"""

from __future__ import annotations

import statistics
import time
import uuid
from typing import Any

from celery_reliable import Reliable

from . import relay
from .inbox import drop_tables, unreachable
from .report import Row, Target

DEFAULT_COUNT = 10_000

RELAY_TARGET = Target("ratio", ">=", 0.80)
P50_TARGET = Target("value", "<=", 10)
P99_TARGET = Target("value", "<=", 100)


def run(count: int | None, brokers: list[str], repeat: int) -> list[Row]:
    """The relay against the raw loop and apply_async, and commit-to-broker latency.

    The measuring is benchmarks/relay.py's (its raw loop, fill, reset and latency probe);
    this only collects the figures as rows.
    """
    count = count or DEFAULT_COUNT
    print(f"\ncelery_reliable relay benchmark: {count} messages, store postgresql")
    rows: list[Row] = []
    for kind in brokers:
        if reason := unreachable(kind):
            print(f"relay {kind}: skipped: {reason}")
            continue
        prefix = f"benchr{uuid.uuid4().hex[:8]}_"
        app = relay._app(kind, prefix)
        reliable = Reliable.of(app)
        reliable.create_schema()
        queue_name = f"q_{prefix}"

        def purge(app: Any = app, queue_name: str = queue_name) -> None:
            relay._purge(app, queue_name)

        try:
            relay._fill(reliable, app.tasks["bench.noop"], count)
            raw, relayed, published = [], [], []
            for _ in range(repeat):
                relay._reset(reliable, purge)
                raw.append(relay._raw_loop(kind, reliable, queue_name))
                relay._reset(reliable, purge)
                started = time.perf_counter()
                moved = reliable.relay.drain()
                relayed.append(moved / (time.perf_counter() - started))
                purge()
                published.append(relay._apply_async_loop(app, count))
            purge()
            samples = min(200, count)
            latency = relay._latency(kind, reliable, app.tasks["bench.noop"], queue_name, samples)
        finally:
            reliable.relay.close()
            purge()
            reliable.database.dispose()
            drop_tables(prefix)
        raw_rate, rate, apply_rate = (statistics.median(x) for x in (raw, relayed, published))
        p50 = statistics.median(latency)
        p99 = latency[max(0, int(len(latency) * 0.99) - 1)]
        print(f"relay {kind}: raw {raw_rate:,.0f}/s, relay {rate:,.0f}/s, p50 {p50:.1f} ms")
        rows += [
            Row(f"relay {kind}: relay vs raw loop", rate, "/s", raw_rate, "raw", RELAY_TARGET),
            Row(f"relay {kind}: relay vs apply_async", rate, "/s", apply_rate, "apply_async"),
            Row(f"relay {kind}: commit->broker p50", p50, " ms", target=P50_TARGET),
            Row(f"relay {kind}: commit->broker p99", p99, " ms", target=P99_TARGET),
        ]
    return rows
