"""Hostile values for the command line and the Flower page: typed by a person, or crafted.

``HOSTILE`` are the classic ones (huge and negative numbers, SQL, markup, format strings,
times and durations past the calendar, text that is not UTF-8); :func:`tokens` adds seeded
random ones made of the same ingredients, so a run finds combinations nobody listed.
"""

from __future__ import annotations

import random

#: Values no id, count, duration or time can be. Each is refused with a clear message.
NOT_A_NUMBER = ("abc", "", "1.5", "1e3", "0x10", "1; DROP TABLE t", "' OR '1'='1", "%s%n")
TOO_BIG = ("99999999999999999999", "9223372036854775808", "-99999999999999999999", "9" * 5000)
BAD_DURATIONS = (
    "soon",
    "",
    "-1d",
    "0",
    "0s",
    "1e9d",
    "30x",
    "d",
    "nan",
    "inf",
    "1.5.5d",
    "1000000d",  # a valid timedelta, but that long ago is before year 1
    "99999999999999999999d",  # no timedelta is that long
    "999999999999w",
    "'; DROP TABLE dead_letter; --",
)
BAD_MOMENTS = (
    "yesterday",
    "2024-13-45",
    "nan",
    "1000000d",
    "99999999999999999999d",
    "0001-01-01T00:00:00+14:00",  # before year 1 in UTC
    "9999-12-31T23:59:59-12:00",  # after year 9999 in UTC
)
#: Text that cannot reach a database as it is: what a shell passes for bytes that are not
#: UTF-8 (Python's surrogate escapes).
NOT_UTF8 = ("\udcff", "task\udce9")
#: Accepted as a filter, matching nothing: the value is a parameter, never SQL or markup.
HARMLESS_TEXT = (
    "'; DROP TABLE dead_letter; --",
    "<script>alert(1)</script>",
    "%s%s%n",
    "x" * 250,
    "\u202eevil",
    "effect' OR '1'='1",
)

_PIECES = (
    "",
    "-",
    "+",
    "0",
    "1",
    "7",
    "9" * 19,
    "9" * 30,
    "\u0661\u0662",
    "e",
    ".",
    "d",
    "w",
    "ms",
    "s",
    "'",
    '"',
    ";",
    "--",
    "%s",
    "{0}",
    "\\",
    "\u202e",
    "NaN",
    "inf",
    " ",
    "\t",
    "DROP TABLE",
    "<script>",
    "<img src=x onerror=alert(1)>",
    "T",
    ":",
    "+14:00",
    "Z",
    "9999-12-31",
    "0001-01-01",
    "0000-00-00",
    "\udcff",
    "\U0001f4a9",
)


def tokens(seed: int, count: int, *, utf8_only: bool = False) -> list[str]:
    """``count`` seeded random values, 1 to 4 ingredients each (``utf8_only``: for HTTP)."""
    rng = random.Random(seed)
    pieces = [p for p in _PIECES if not (utf8_only and "\udcff" in p)]
    return ["".join(rng.choices(pieces, k=rng.randint(1, 4))) for _ in range(count)]
