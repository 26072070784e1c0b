"""``celery reliable breakers [--reset NAME] [--json]``: circuit breaker states."""

from __future__ import annotations

import click

from celery_reliable.exceptions import ConfigurationError

from .base import extension, reliable
from .output import emit_json, json_option, table


@reliable.command()
@click.option("--reset", "reset_name", metavar="NAME", help="Close this breaker (all workers).")
@json_option
@click.pass_context
def breakers(ctx: click.Context, reset_name: str | None, as_json: bool) -> None:
    """The app's circuit breakers and their states (shared through reliable_redis_url)."""
    registry = extension(ctx).breakers
    if reset_name is not None:
        try:
            registry.reset(reset_name)
        except ConfigurationError as exc:
            raise click.UsageError(str(exc)) from exc
        click.echo(f"circuit breaker {reset_name} reset: closed")
        return
    states = registry.states()
    if as_json:
        emit_json(states)
    else:
        table(("BREAKER", "STATE"), list(states.items()))
