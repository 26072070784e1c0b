"""``python -m benchmarks [name ...] [--count N] [--brokers redis,rabbitmq] [--repeat K]``.

``python -m benchmarks relay --rows 1000000`` measures the relay's memory over a long drain
instead of its throughput.

Runs the named benchmarks (all of them when none is named), each printing its own section,
then ONE table of every measure beside its baseline from the same run, the ratio, the
target and whether it was met. ``--markdown`` prints that table for docs/performance.md.
Missed targets do not change the exit status (this is a report, not a test); a benchmark
that fails to run does (1), after the table of the others.
"""

from __future__ import annotations

import argparse
import os
import time
import traceback
from collections.abc import Callable

from . import cleanup, inbox, relay, replay
from .report import Row, load, render

BENCHMARKS: dict[str, Callable[[int | None, list[str], int], list[Row]]] = {
    "inbox": inbox.run,
    "relay": relay.run,
    "replay": replay.run,
    "cleanup": cleanup.run,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument(
        "names", nargs="*", metavar="benchmark", help=f"any of: {', '.join(BENCHMARKS)}"
    )
    inbox.add_arguments(parser)
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    parser.add_argument(
        "--rows",
        type=inbox.at_least(1000),
        default=None,
        help="relay: drain this many rows once and report the relay's memory instead",
    )
    args = parser.parse_args(argv)
    unknown = [name for name in args.names if name not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    started, load_before = time.strftime("%Y-%m-%d %H:%M"), load()
    rows: list[Row] = []
    failed = []
    for name in args.names or BENCHMARKS:
        try:
            if name == "relay" and args.rows:
                relay.memory(args.rows, args.brokers)  # a memory report, not a table row
                continue
            rows += BENCHMARKS[name](args.count, args.brokers, args.repeat)
        except Exception:  # a report: say what failed, and still show the others
            traceback.print_exc()
            failed.append(name)
    print(
        f"\ncelery_reliable benchmarks, {started}, {os.cpu_count()} cores, "
        f"load average {load_before} at the start, {load()} at the end"
    )
    print(render(rows, markdown=args.markdown))
    if failed:
        print(f"failed to run: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
