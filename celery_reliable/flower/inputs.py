"""What a Dead Letters page reads from a request, checked, and how it shows values.

Every value typed into a form is checked here and refused with a message on the page (400)
by :class:`Refused`; the pages in :mod:`.handlers` only see typed values.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import tornado.web

from celery_reliable.dead_letters import DeadLetterFilter, DeadLetterReason
from celery_reliable.durations import parse_moment, readable
from celery_reliable.store.tables import MAX_ROW_ID

DEFAULT_LIMIT = 50
MAX_LIMIT = 500
#: Longer than any task name or ISO time; longer input is a mistake or an attack.
MAX_FIELD = 255
#: The filter fields, as named in forms and in links.
FILTER_FIELDS = ("reason", "task", "since", "until", "replayed")
#: ``replayed`` in a form: not given, "no", "yes".
REPLAYED = {"": None, "no": False, "yes": True}


class Refused(tornado.web.HTTPError):
    """A request that cannot be served as asked; ``message`` is shown on the page."""

    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(status_code)
        self.message = message


@dataclass(frozen=True)
class Filters:
    """The list filters, parsed, and as they were typed (to refill the form and build links)."""

    matching: DeadLetterFilter
    typed: dict[str, str]

    def hidden_fields(self, *names: str) -> list[tuple[str, str]]:
        """The filters given, as (name, value) pairs for a form's hidden inputs."""
        return [(name, self.typed[name]) for name in names if self.typed[name]]


def parse_filters(read: Callable[[str, str], str]) -> Filters:
    """Filters from a form or query string (``read(name, default)``); Refused(400) if invalid."""
    typed = {name: text(read, name) for name in FILTER_FIELDS}
    reason = None
    if typed["reason"]:
        try:
            reason = DeadLetterReason(typed["reason"])
        except ValueError:
            known = ", ".join(r.value for r in DeadLetterReason)
            raise Refused(400, f"unknown reason {typed['reason']!r}; known: {known}") from None
    if typed["replayed"] not in REPLAYED:
        raise Refused(400, f"replayed must be 'yes', 'no' or empty, not {typed['replayed']!r}")
    since, until = moment(typed["since"], "since"), moment(typed["until"], "until")
    if since is not None and until is not None and since >= until:
        raise Refused(400, "since must be before until")
    matching = DeadLetterFilter(
        reason, typed["task"] or None, since, until, REPLAYED[typed["replayed"]]
    )
    return Filters(matching, typed)


def text(read: Callable[[str, str], str], name: str) -> str:
    value = read(name, "").strip()
    if len(value) > MAX_FIELD:
        raise Refused(400, f"{name} is longer than {MAX_FIELD} characters")
    return value


def moment(value: str, name: str) -> datetime | None:
    """An ISO 8601 time (UTC when it has no zone), or an age such as ``2h`` (that long ago).

    The same spelling as ``celery reliable dlq list --since``.
    """
    if not value:
        return None
    try:
        return parse_moment(value)
    except ValueError as exc:
        raise Refused(400, f"{name}: {exc}") from None


def whole(value: str, name: str, minimum: int, maximum: int | None = None) -> int:
    """A whole number within bounds, or Refused(400) saying which."""
    try:
        number = int(value)
    except ValueError:
        raise Refused(400, f"{name} must be a whole number, not {value[:MAX_FIELD]!r}") from None
    if number < minimum or (maximum is not None and number > maximum):
        bounds = f"from {minimum} to {maximum}" if maximum is not None else f">= {minimum}"
        raise Refused(400, f"{name} must be {bounds}, not {number}")
    return number


def entry_id(value: str) -> int:
    # Ids are database integers: anything outside a signed 64-bit range cannot exist.
    return whole(value, "entry id", 1, MAX_ROW_ID)


# -- what templates use to show values -------------------------------------------------------


def when(value: datetime | None) -> str:
    """A stored time in UTC (SQLite hands back naive datetimes, which are UTC)."""
    if value is None:
        return "-"
    aware = value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    return aware.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def pretty(value: Any) -> str:
    """Arguments, headers and delivery info as indented JSON (the text is escaped on render)."""
    return json.dumps(value, indent=2, sort_keys=True, default=str, ensure_ascii=False)


TEMPLATE_HELPERS = {"when": when, "age": readable, "pretty": pretty}
