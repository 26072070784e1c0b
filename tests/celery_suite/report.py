"""Compare the outcomes of the plain and the reliable run of Celery's integration tests."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: The differences docs/compatibility.md justifies by design: one pytest node id per line.
EXPECTED = Path(__file__).with_name("expected_differences.txt")

Outcomes = dict[str, dict[str, Any]]


def read_outcomes(path: Path) -> Outcomes:
    """The outcomes the plugin wrote, by test id (none when the run never started a test)."""
    if not path.exists():
        return {}
    entries = (json.loads(line) for line in path.read_text().splitlines() if line.strip())
    return {entry["nodeid"]: entry for entry in entries}


def load_expected(path: Path = EXPECTED) -> set[str]:
    """The test ids listed in ``path``; blank lines and ``#`` comments are ignored."""
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return {line for line in lines if line}


def _file_of(nodeid: str) -> str:
    return nodeid.split("::", 1)[0].rsplit("/", 1)[-1]


@dataclass
class Comparison:
    """Which tests pass on plain Celery and which of those do not on ReliableTask."""

    plain: Outcomes
    reliable: Outcomes
    expected: set[str]

    def passed(self, outcomes: Outcomes) -> set[str]:
        return {nodeid for nodeid, entry in outcomes.items() if entry["outcome"] == "passed"}

    @property
    def differences(self) -> list[str]:
        """Passed on plain, did not pass (or did not run) on reliable."""
        return sorted(self.passed(self.plain) - self.passed(self.reliable))

    @property
    def unexpected(self) -> list[str]:
        return [nodeid for nodeid in self.differences if nodeid not in self.expected]

    @property
    def stale(self) -> list[str]:
        """Listed as expected differences, yet passing on reliable in this run."""
        return sorted(self.expected & self.passed(self.plain) & self.passed(self.reliable))

    def per_file(self) -> dict[str, dict[str, int]]:
        counts: dict[str, Counter[str]] = {}
        for nodeid in self.plain.keys() | self.reliable.keys():
            counts.setdefault(_file_of(nodeid), Counter())["tests"] += 1
        for name, outcomes in (("plain", self.plain), ("reliable", self.reliable)):
            for nodeid in self.passed(outcomes):
                counts[_file_of(nodeid)][f"passed_{name}"] += 1
        for nodeid in self.differences:
            counts[_file_of(nodeid)]["differ"] += 1
        for nodeid in self.unexpected:
            counts[_file_of(nodeid)]["unexpected"] += 1
        columns = ("tests", "passed_plain", "passed_reliable", "differ", "unexpected")
        return {name: {c: counts[name][c] for c in columns} for name in sorted(counts)}

    def as_dict(self) -> dict[str, Any]:
        return {
            "per_file": self.per_file(),
            "differences": [
                {"nodeid": nodeid, **_brief(self.reliable.get(nodeid))}
                for nodeid in self.differences
            ],
            "unexpected": self.unexpected,
            "stale_expected": self.stale,
        }

    def table(self) -> str:
        """The per-file table, then each differing test with its outcome on reliable."""
        header = ("file", "tests", "passed plain", "passed reliable", "differ", "not listed")
        rows: list[tuple[str, ...]] = [header]
        totals = Counter[str]()
        for name, counts in self.per_file().items():
            rows.append((name, *(str(value) for value in counts.values())))
            totals.update(counts)
        rows.append(("total", *(str(value) for value in totals.values())))
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        lines = [
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
            for row in rows
        ]
        if self.differences:
            lines.append(
                "\npassed on plain, not on reliable ('*': not in expected_differences.txt):"
            )
            for nodeid in self.differences:
                brief = _brief(self.reliable.get(nodeid))
                mark = "*" if nodeid in self.unexpected else " "
                lines.append(f"{mark} {nodeid}  [{brief['outcome']}] {brief['message'][:120]}")
        if self.stale:
            lines.append("\nlisted in expected_differences.txt but passing on reliable now:")
            lines.extend(f"  {nodeid}" for nodeid in self.stale)
        return "\n".join(lines)


def _brief(entry: dict[str, Any] | None) -> dict[str, str]:
    if entry is None:
        return {"outcome": "not run", "message": "(the run stopped before this test)"}
    first_line = entry.get("message", "").strip().splitlines()[:1]
    return {"outcome": entry["outcome"], "message": first_line[0] if first_line else ""}


def compare(plain: Outcomes, reliable: Outcomes, expected: set[str]) -> Comparison:
    return Comparison(plain, reliable, expected)
