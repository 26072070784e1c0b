"""``celery reliable health --ready|--live [--json]``: exit 0 healthy, 1 not (exec probes)."""

from __future__ import annotations

import click

from .base import extension, reliable
from .output import emit_json, json_option, table


@reliable.command()
@click.option("--ready", "mode", flag_value="ready", help="Readiness: store, broker, relay, DLQ.")
@click.option("--live", "mode", flag_value="live", help="Liveness: this host's relay loop.")
@json_option
@click.pass_context
def health(ctx: click.Context, mode: str | None, as_json: bool) -> None:
    """Check health; exit 0 when healthy (degraded included), 1 when not."""
    if mode is None:
        raise click.UsageError("give --ready or --live")
    checker = extension(ctx).health
    report = checker.readiness() if mode == "ready" else checker.liveness()
    if as_json:
        emit_json(report.as_dict())
    else:
        table(("CHECK", "STATUS", "DETAIL"), [(c.name, c.status, c.detail) for c in report.checks])
        click.echo(f"{mode}: {report.status}")
    ctx.exit(0 if report.healthy else 1)
