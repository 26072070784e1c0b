"""``python -m benchmarks [inbox] [relay] [--count N] [--brokers redis,rabbitmq] [--repeat K]``.

``python -m benchmarks relay --rows 1000000`` measures the relay's memory over a long drain
instead of its throughput.

Runs the named benchmarks (all of them when none is named) and always exits 0 once the
arguments are valid: the output is a report, not a test.
"""

from __future__ import annotations

import argparse

from . import inbox, relay

BENCHMARKS = {"inbox": inbox, "relay": relay}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument(
        "names", nargs="*", metavar="benchmark", help=f"any of: {', '.join(BENCHMARKS)}"
    )
    inbox.add_arguments(parser)
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
    for name in args.names or BENCHMARKS:
        if name == "relay" and args.rows:
            relay.memory(args.rows, args.brokers)
        else:
            BENCHMARKS[name].run(args.count, args.brokers, args.repeat)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
