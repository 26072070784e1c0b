"""``python -m benchmarks [inbox] [--count N] [--brokers redis,rabbitmq] [--repeat K]``."""

from __future__ import annotations

import argparse
import sys

from . import inbox

BENCHMARKS = {"inbox": inbox}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("names", nargs="*", choices=[[], *BENCHMARKS], default=[])
    inbox.add_arguments(parser)
    args = parser.parse_args(argv)
    brokers = [b for b in args.brokers.split(",") if b]
    unknown = sorted(set(brokers) - set(inbox.BROKERS))
    if unknown or args.count < 100 or args.repeat < 1:
        parser.error(f"unknown brokers {unknown}" if unknown else "--count >= 100, --repeat >= 1")
    for name in args.names or list(BENCHMARKS):
        BENCHMARKS[name].run(args.count, brokers, args.repeat)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
