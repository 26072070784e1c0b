"""``celery reliable breakers [--reset NAME] [--json]``: circuit breaker states.

Only breakers shared through ``reliable_redis_url`` have a state this command can read or
reset. Without it each worker process keeps its own in memory, so the command says so
instead of showing the always-closed breaker of its own process.
"""

from __future__ import annotations

import click

from .base import extension, reliable
from .output import emit_json, json_option, table

PER_PROCESS = (
    "without reliable_redis_url each worker process keeps its own breaker state in memory: "
    "it cannot be seen or reset from the command line"
)
UNKNOWN = "unknown (per process)"


@reliable.command()
@click.option("--reset", "reset_name", metavar="NAME", help="Close this breaker (all workers).")
@json_option
@click.pass_context
def breakers(ctx: click.Context, reset_name: str | None, as_json: bool) -> None:
    """The app's circuit breakers and their states (shared through reliable_redis_url)."""
    registry = extension(ctx).breakers
    shared = registry.redis_url is not None
    if reset_name is not None:
        if reset_name not in registry:
            known = ", ".join(registry.states()) or "none"
            raise click.UsageError(
                f"no circuit breaker named {reset_name!r} (the app has: {known})"
            )
        if not shared:
            click.echo(f"circuit breaker {reset_name} not reset: {PER_PROCESS}", err=True)
            ctx.exit(1)
        registry.reset(reset_name)
        click.echo(f"circuit breaker {reset_name} reset: closed")
        return
    states = registry.states()
    if not shared:  # this process's own breakers: always closed, and not the workers'
        states = dict.fromkeys(states, UNKNOWN)
    if as_json:
        emit_json(states)
        return
    if not shared:
        click.echo(f"note: {PER_PROCESS}", err=True)
    table(("BREAKER", "STATE"), list(states.items()))
