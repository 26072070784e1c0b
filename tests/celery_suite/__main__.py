"""``python -m tests.celery_suite``: Celery's own integration tests, plain and on ReliableTask.

Runs the chosen files of Celery's ``t/integration/`` (from the sdist of the installed
Celery) twice on Redis: once with plain Celery, once with every task a ReliableTask and a
PostgreSQL store. Prints a table per file and each test that passes on plain but not on
reliable, writes a JSON report, and exits 1 when such a test is not listed in
tests/celery_suite/expected_differences.txt (the differences docs/compatibility.md
justifies). See docs/testing.md, "Celery's own integration suite".
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from .report import Comparison, compare, load_expected, read_outcomes
from .source import celery_version, integration_tests

REPO = Path(__file__).resolve().parents[2]
FILES = ("test_tasks.py", "test_canvas.py", "test_group_chains.py")
#: Redis databases of this runner only (the repository's own tests use 0 to 2): each run
#: flushes them first, so messages left by an earlier, interrupted run cannot leak in.
BROKER = "redis://127.0.0.1:6379/14"
BACKEND = "redis://127.0.0.1:6379/15"
DATABASE = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def cache_dir() -> Path:
    """Where the sdist and its extracted tests are kept between runs."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "celery_reliable"


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.celery_suite", description=__doc__)
    parser.add_argument("--files", nargs="+", default=list(FILES), help="of t/integration/")
    parser.add_argument("-k", dest="keyword", help="pytest -k expression")
    parser.add_argument("--timeout", type=float, default=90.0, help="seconds per test")
    parser.add_argument("--cache", type=Path, default=cache_dir(), help="sdist and extracted tests")
    parser.add_argument("--out", type=Path, help="logs and report (default: CACHE/run)")
    parser.add_argument("--broker", default=BROKER)
    parser.add_argument("--backend", default=BACKEND)
    parser.add_argument("--database-url", default=DATABASE, help="the reliable variant's store")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    out = args.out or args.cache / "run"
    out.mkdir(parents=True, exist_ok=True)
    root = integration_tests(args.cache)
    started = time.monotonic()
    outcomes = {}
    for variant in ("plain", "reliable"):
        outcomes[variant] = _run_variant(variant, args, root, out)
    comparison = compare(outcomes["plain"], outcomes["reliable"], load_expected())
    report = {
        "celery": celery_version(),
        "files": args.files,
        "keyword": args.keyword,
        "timeout": args.timeout,
        "seconds": round(time.monotonic() - started),
        **comparison.as_dict(),
        "outcomes": outcomes,
    }
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(comparison.table())
    print(f"\nreport: {out / 'report.json'}  logs: {out}/plain.log, {out}/reliable.log")
    return _exit_code(comparison, outcomes["plain"])


def _run_variant(
    variant: str, args: argparse.Namespace, root: Path, out: Path
) -> dict[str, dict[str, Any]]:
    """Run the chosen tests in a pytest process of their own; return their outcomes by id."""
    import redis

    for url in (args.broker, args.backend):
        redis.Redis.from_url(url).flushdb()
    results = out / f"{variant}.jsonl"
    results.unlink(missing_ok=True)
    prefix = f"celsuite_{uuid.uuid4().hex[:8]}_"
    command = [sys.executable, "-m", "pytest", "-c", "pytest.ini", "--rootdir", "."]
    command += ["-p", "tests.celery_suite.plugin", "--suite-variant", variant]
    command += ["--suite-results", str(results), "--suite-timeout", str(args.timeout)]
    command += ["--suite-database-url", args.database_url, "--suite-table-prefix", prefix]
    command += [f"t/integration/{name}" for name in args.files]
    command += ["-k", args.keyword] if args.keyword else []
    path = [str(REPO), str(root), os.environ.get("PYTHONPATH", "")]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, path)),
        "TEST_BROKER": args.broker,  # read by Celery's integration conftest
        "TEST_BACKEND": args.backend,
    }
    print(f"{variant}: running (log: {out / f'{variant}.log'})", flush=True)
    started = time.monotonic()
    try:
        with (out / f"{variant}.log").open("w") as log:
            subprocess.run(command, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    finally:
        if variant == "reliable":
            from celery_reliable.testing import drop_store

            drop_store(args.database_url, prefix)
    outcomes = read_outcomes(results)
    print(f"{variant}: {len(outcomes)} tests in {time.monotonic() - started:.0f} s", flush=True)
    return outcomes


def _exit_code(comparison: Comparison, plain: dict[str, dict[str, Any]]) -> int:
    if not any(entry["outcome"] == "passed" for entry in plain.values()):
        print("no test passed on plain Celery: the run itself is broken", file=sys.stderr)
        return 2
    return 1 if comparison.unexpected else 0


if __name__ == "__main__":
    sys.exit(main())
