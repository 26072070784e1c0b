"""The one table ``python -m benchmarks`` ends with: every figure beside its baseline and target.

Each benchmark returns :class:`Row` objects; a row's baseline was measured in the same run,
on the same machine, moments apart, so the ratio holds even when the machine is busy and
absolute figures wander. ``--markdown`` prints the table for docs/performance.md.
"""

from __future__ import annotations

import operator
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

_OPERATORS: dict[str, Callable[[float, float], bool]] = {">=": operator.ge, "<=": operator.le}


@dataclass(frozen=True)
class Target:
    """``ratio >= 0.9`` (against the baseline) or ``value <= 10`` (the figure itself)."""

    on: str  # "ratio" | "value"
    op: str  # ">=" | "<="
    bound: float

    def met(self, value: float, ratio: float | None) -> bool | None:
        subject = ratio if self.on == "ratio" else value
        return None if subject is None else _OPERATORS[self.op](subject, self.bound)

    def describe(self, unit: str) -> str:
        if self.on == "ratio":
            return f"{self.op} {self.bound:.2f}x"
        return f"{self.op} {_number(self.bound)}{unit}"


@dataclass(frozen=True)
class Row:
    """One measure: its value, the baseline it is compared with, and the issue's target."""

    measure: str
    value: float
    unit: str  # "/s", " ms", " MiB"
    baseline: float | None = None
    baseline_name: str = ""
    target: Target | None = None

    @property
    def ratio(self) -> float | None:
        return self.value / self.baseline if self.baseline else None

    @property
    def met(self) -> bool | None:
        return None if self.target is None else self.target.met(self.value, self.ratio)

    def cells(self) -> list[str]:
        baseline = (
            f"{_number(self.baseline)}{self.unit} ({self.baseline_name})"
            if self.baseline is not None
            else ""
        )
        return [
            self.measure,
            f"{_number(self.value)}{self.unit}",
            baseline,
            f"{self.ratio:.2f}x" if self.ratio is not None else "",
            self.target.describe(self.unit) if self.target is not None else "",
            {True: "met", False: "MISSED", None: ""}[self.met],
        ]


HEADER = ["measure", "value", "baseline (same run)", "ratio", "target", "result"]


def _number(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.1f}"


def render(rows: Sequence[Row], *, markdown: bool = False) -> str:
    """The rows as a plain-text table (or a Markdown one)."""
    table = [HEADER, *(row.cells() for row in rows)]
    if markdown:
        lines = ["| " + " | ".join(cells) + " |" for cells in table]
        lines.insert(1, "|" + "---|" * len(HEADER))
        return "\n".join(lines)
    widths = [max(len(cells[i]) for cells in table) for i in range(len(HEADER))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True))
        for cells in table
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(line.rstrip() for line in lines)


def load() -> str:
    """The load average (1, 5, 15 min): other work on the machine skews every figure."""
    return ", ".join(f"{n:.2f}" for n in os.getloadavg())
