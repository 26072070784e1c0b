"""Exactly-once, checked by message: every id sent applied once, none twice, none invented.

Counting rows is not enough: a lost message and a doubled one add up to the right total.
These helpers compare the ids you sent with the ids your tasks' effects carry (an order
number, a message id) and report each kind of failure by count, with examples.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, select

from .waiting import WaitTimeout, wait_for

#: Ids quoted per kind of failure in a report; the counts are always complete.
EXAMPLES = 5


@dataclass(frozen=True)
class ExactlyOnceReport:
    """Expected ids against applied effects; ``str()`` gives the counts and a few examples."""

    expected: int
    applied: int
    missing: tuple[str, ...]
    doubled: Mapping[str, int]  # id -> times applied, for ids applied more than once
    unexpected: tuple[str, ...]  # applied, but never expected

    @property
    def complete(self) -> bool:
        """Every expected id was applied at least once."""
        return not self.missing

    @property
    def exactly_once(self) -> bool:
        """Every expected id applied once, and nothing else applied."""
        return not (self.missing or self.doubled or self.unexpected)

    def __str__(self) -> str:
        distinct = self.applied - sum(n - 1 for n in self.doubled.values())
        lines = [
            f"{self.expected} expected, {self.applied} effects applied ({distinct} distinct): "
            f"{len(self.missing)} missing, {len(self.doubled)} doubled, "
            f"{len(self.unexpected)} unexpected"
        ]
        if self.missing:
            lines.append(f"  missing: {_examples(self.missing)}")
        if self.doubled:
            doubled = [f"{key} x{n}" for key, n in self.doubled.items()]
            lines.append(f"  doubled: {_examples(doubled)}")
        if self.unexpected:
            lines.append(f"  unexpected: {_examples(self.unexpected)}")
        return "\n".join(lines)


def _examples(items: Iterable[str]) -> str:
    items = list(items)
    more = f", ... ({len(items) - EXAMPLES} more)" if len(items) > EXAMPLES else ""
    return ", ".join(items[:EXAMPLES]) + more


def check_exactly_once(expected: Iterable[object], applied: Iterable[object]) -> ExactlyOnceReport:
    """Compare the ids sent with the ids the effects carry (compared as strings)."""
    wanted = {str(key) for key in expected}
    counts = Counter(str(key) for key in applied)
    return ExactlyOnceReport(
        expected=len(wanted),
        applied=sum(counts.values()),
        missing=tuple(sorted(wanted - counts.keys())),
        doubled={key: n for key, n in sorted(counts.items()) if n > 1},
        unexpected=tuple(sorted(counts.keys() - wanted)),
    )


def assert_exactly_once(expected: Iterable[object], applied: Iterable[object]) -> ExactlyOnceReport:
    """:func:`check_exactly_once`, raising AssertionError with the report unless it held."""
    report = check_exactly_once(expected, applied)
    if not report.exactly_once:
        raise AssertionError(f"not exactly once: {report}")
    return report


def wait_for_exactly_once(
    expected: Iterable[object],
    applied: Callable[[], Iterable[object]],
    timeout: float,
    *,
    interval: float = 0.2,
    nudge: Callable[[], object] | None = None,
) -> ExactlyOnceReport:
    """Wait until every expected id is applied, then assert exactly once.

    ``applied`` is called on each poll (a query of your effects table; see
    :func:`column_values`). ``nudge``, if given, runs before each poll: what a periodic
    job would do in production, e.g. ``reliable.maintenance.recover_stuck``. On timeout
    the AssertionError carries the report, so the missing ids are named.
    """
    wanted = [str(key) for key in expected]
    last: list[ExactlyOnceReport] = []

    def complete() -> bool:
        if nudge is not None:
            nudge()
        last[:] = [check_exactly_once(wanted, applied())]
        return last[0].complete

    try:
        wait_for(complete, timeout, interval, what="every expected effect")
    except WaitTimeout:
        raise AssertionError(f"timed out after {timeout}s: {last[0]}") from None
    return assert_exactly_once(wanted, applied())


def column_values(bind: Engine | Connection, column: Any) -> list[Any]:
    """Every value of a table column, duplicates kept (``column_values(engine, t.c.order_id)``)."""
    query = select(column)
    if isinstance(bind, Engine):
        with bind.connect() as conn:
            return list(conn.scalars(query))
    return list(bind.scalars(query))
