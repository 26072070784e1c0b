"""The root of the ``celery reliable`` group and what every sub-command needs from it."""

from __future__ import annotations

from typing import Any

import click

from celery_reliable.exceptions import ConfigurationError
from celery_reliable.extension import Reliable


@click.group(name="reliable")
def reliable() -> None:
    """celery_reliable: schema, inbox, outbox and dead letters."""


def extension(ctx: click.Context) -> Reliable:
    """The app's extension, validated; a usage error (exit 2) if the app has none."""
    app: Any = getattr(ctx.find_root().obj, "app", None)
    if app is None:
        raise click.UsageError("no app: run as `celery -A yourapp reliable ...`")
    try:
        ext = Reliable.of(app)
        ext.check()
    except ConfigurationError as exc:
        raise click.UsageError(str(exc)) from exc
    return ext
