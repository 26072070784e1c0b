"""The benchmarks still run: every module once, with a tiny count, through ``python -m benchmarks``.

Figures at this size mean nothing; this only keeps the code from rotting (a renamed API, a
changed table) between the runs that matter, which are on demand (docs/performance.md).
"""

from __future__ import annotations

import os
import subprocess
import sys

from tests.support import ROOT, SERVICES, require


def test_every_benchmark_runs_and_reports_a_row_each():
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "BENCH_DB": require("postgresql"),
        "BENCH_REDIS_URL": require("redis"),
        "BENCH_MYSQL_URL": SERVICES["mysql"],  # cleanup skips MariaDB when it is absent
        "BENCH_LOG": os.devnull,
    }
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--count", "100", "--brokers", "redis"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    table = result.stdout.split("celery_reliable benchmarks, ", 1)[1]
    for measure in (
        "inbox redis: ReliableTask vs plain Task",
        "inbox redis: ReliableTask insert vs plain Session insert",
        "relay redis: relay vs raw loop",
        "relay redis: commit->broker p99",
        "replay redis: dead letters -> broker",
        "cleanup postgresql: rows/s in 10k batches",
    ):
        assert measure in table, result.stdout
    cpu = result.stdout.split("CPU per message, µs", 1)[1].split("ratio", 1)[0]
    assert "reliable (insert)" in cpu, result.stdout  # a CPU row per variant
