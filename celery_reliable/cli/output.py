"""How commands print: an aligned table for people, JSON (``--json``) for scripts."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from contextlib import nullcontext
from datetime import datetime
from typing import Any

import click

from celery_reliable.durations import ago, parse_duration, parse_moment
from celery_reliable.store.tables import MAX_ROW_ID

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
#: A row id: what the stores can hold (a bigger number would fail in the database).
ROW_ID = click.IntRange(min=1, max=MAX_ROW_ID)
#: A --limit or --offset, bounded likewise.
COUNT = click.IntRange(min=0, max=MAX_ROW_ID)


def progress_bar(length: int, label: str) -> Any:
    """A progress bar on stderr, so stdout stays parseable; only on a terminal.

    Elsewhere (a script, cron, a log) click would still print the label alone, and a
    command that then fails would print two lines where its error is one.
    """
    if not sys.stderr.isatty():
        return nullcontext(_NoProgress())
    return click.progressbar(length=length, label=label, file=sys.stderr)


class _NoProgress:
    """What a command updates when no bar is shown."""

    def update(self, steps: int) -> None:
        """Nothing to draw."""


def plural(count: int, noun: str, nouns: str | None = None) -> str:
    """``1 entry``, ``2 entries``: a count as people write it."""
    return f"{count} {noun if count == 1 else nouns or noun + 's'}"


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str, sort_keys=True))


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Columns padded to their widest cell; an empty result says so."""
    if not rows:
        click.echo("(none)")
        return
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    for line in [list(headers), *cells]:
        click.echo("  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip())


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    text = str(value).replace("\n", " ")
    return text if len(text) <= 60 else text[:57] + "..."


class Moment(click.ParamType):  # type: ignore[type-arg]  # generic only in newer click
    """An ISO 8601 time (UTC when it has no zone), or an age such as ``2h`` (that long ago)."""

    name = "time"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, datetime):
            return value
        try:
            return parse_moment(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class Duration(click.ParamType):  # type: ignore[type-arg]  # generic only in newer click
    """A duration such as ``30d``, ``12h``, ``90`` (seconds)."""

    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            return parse_duration(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class Age(Duration):
    """A duration that names a moment, as ``--older-than 30d``: not before the year 1."""

    name = "age"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        age = super().convert(value, param, ctx)
        try:
            ago(age)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)
        return age


class Text(click.ParamType):  # type: ignore[type-arg]  # generic only in newer click
    """Text a database can compare: UTF-8 (a shell passes other bytes as lone surrogates,
    which no driver can send) and without NUL (PostgreSQL refuses it)."""

    name = "text"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        text = str(value)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            self.fail(f"{text!r} is not valid UTF-8", param, ctx)
        if "\x00" in text:
            self.fail(f"{text!r} contains a NUL character", param, ctx)
        return text


class PerSecond(click.ParamType):  # type: ignore[type-arg]  # generic only in newer click
    """A rate: a finite number > 0 (click's FloatRange lets ``nan`` and ``inf`` through)."""

    name = "rate"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            rate = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(rate) or rate <= 0:
            self.fail(f"{value!r} is not a finite number > 0", param, ctx)
        return rate
