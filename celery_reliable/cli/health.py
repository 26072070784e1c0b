"""``celery reliable health [--ready|--live] [--json]``: exit 0 healthy, 1 not (exec probes)."""

from __future__ import annotations

import click

from celery_reliable.health import HealthReport

from .base import extension, reliable
from .output import emit_json, json_option, table


@reliable.command()
@click.option(
    "--ready", "mode", flag_value="ready", help="Readiness only: store, broker, relay, DLQ."
)
@click.option("--live", "mode", flag_value="live", help="Liveness only: this host's relay loop.")
@json_option
@click.pass_context
def health(ctx: click.Context, mode: str | None, as_json: bool) -> None:
    """Check health (both probes unless one is named); exit 0 when healthy, 1 when not.

    A probe's ``degraded`` counts as healthy.
    """
    checker = extension(ctx).health
    probes = {"ready": checker.readiness, "live": checker.liveness}
    reports: dict[str, HealthReport] = {
        name: probe() for name, probe in probes.items() if mode in (None, name)
    }
    if as_json:  # one probe: its report, as before; both: a report per probe
        emit_json(
            reports[mode].as_dict()
            if mode
            else {name: report.as_dict() for name, report in reports.items()}
        )
    else:
        checks = [(name, c) for name, report in reports.items() for c in report.checks]
        table(
            ("PROBE", "CHECK", "STATUS", "DETAIL"),
            [(n, c.name, c.status, c.detail) for n, c in checks],
        )
        for name, report in reports.items():
            click.echo(f"{name}: {report.status}")
    ctx.exit(0 if all(r.healthy for r in reports.values()) else 1)
