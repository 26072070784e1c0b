"""Durations written the way operators write them: ``90``, ``30s``, ``5m``, ``12h``, ``30d``,
and shown the way they read them: ``20 s``, ``5 min 3 s``.

Settings and the command line share this parser so that one spelling works everywhere;
the command line, the Flower page and the relay's log share :func:`readable`.
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
    try:
        return timedelta(seconds=seconds)
    except OverflowError:  # past timedelta's 999,999,999 days: a ValueError like the rest
        raise ValueError(f"{value!r} is too long a duration") from None


def readable(value: timedelta | None) -> str:
    """An age or a wait as people read it: ``0.4 s``, ``20 s``, ``5 min 3 s``, ``2 d 4 h``
    (the two largest units); ``-`` for none."""
    if value is None:
        return "-"
    seconds = value.total_seconds()
    if seconds < 10:
        return f"{seconds:.1f} s"
    parts, rest = [], round(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60), ("s", 1)):
        count, rest = divmod(rest, size)
        if count:
            parts.append(f"{count} {unit}")
    return " ".join(parts[:2])


def ago(duration: timedelta, now: datetime | None = None) -> datetime:
    """The moment ``duration`` before ``now`` (default: now, UTC).

    ValueError, not OverflowError, when that is before the year 1: an age typed on the
    command line or the Flower page (``1000000d``) is then refused like any bad value.
    """
    try:
        return (now or datetime.now(timezone.utc)) - duration
    except OverflowError:
        raise ValueError(f"{duration.days} days ago is before the year 1") from None


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
            age = parse_duration(value)
        except ValueError:
            if _PATTERN.match(value):
                raise  # an age, but not a usable one: it says why
            raise ValueError(f"{value!r} is neither an ISO time nor an age such as '2h'") from None
        return ago(age)
    aware = parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)
    try:  # what every store does with it: in UTC, it must still be a datetime
        aware.astimezone(timezone.utc)
    except OverflowError:
        raise ValueError(f"{value!r} is outside the years 1 to 9999 in UTC") from None
    return aware
