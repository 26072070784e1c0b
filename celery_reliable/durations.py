"""Durations written the way operators write them: ``90``, ``30s``, ``5m``, ``12h``, ``30d``.

Settings and the command line share this parser so that one spelling works everywhere.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")


def parse_duration(value: object) -> timedelta:
    """Return ``value`` as a positive timedelta, or raise ValueError saying what is accepted."""
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and (match := _PATTERN.match(value)):
        seconds = float(match.group(1)) * _UNITS[match.group(2) or "s"]
    else:
        raise ValueError(
            f"{value!r} is not a duration: use seconds, a timedelta, or a string such as "
            "'500ms', '30s', '5m', '12h', '30d'"
        )
    if seconds <= 0:
        raise ValueError(f"{value!r} is not a positive duration")
    return timedelta(seconds=seconds)


def parse_seconds(value: object, *, allow_zero: bool = False) -> float:
    """:func:`parse_duration` in seconds; with ``allow_zero``, 0 means "at once"."""
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if (
        allow_zero
        and isinstance(value, (int, float))
        and not isinstance(value, bool)
        and value == 0
    ):
        return 0.0
    return parse_duration(value).total_seconds()


def parse_moment(value: str) -> datetime:
    """An ISO 8601 time (UTC when it has no zone), or an age such as ``2h`` (that long ago).

    The spelling of ``--since``/``--until`` on the command line and on the Flower page.
    """
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        try:
            return datetime.now(timezone.utc) - parse_duration(value)
        except ValueError:
            raise ValueError(f"{value!r} is neither an ISO time nor an age such as '2h'") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)
