"""``celery reliable cleanup [--dry-run]`` and ``recover-stuck``: the beat jobs, by hand."""

from __future__ import annotations

import click

from celery_reliable.maintenance import Report

from .base import extension, reliable
from .output import emit_json, json_option, progress_bar, table


def _show(report: Report, as_json: bool, verb: str) -> None:
    if as_json:
        emit_json({"skipped": report.skipped, "counts": report.counts})
    elif report.skipped:
        click.echo("skipped: another instance holds the lock")
    else:
        table(("ROWS", verb.upper()), list(report.counts.items()))


@reliable.command()
@click.option("--dry-run", is_flag=True, help="Count what would be deleted; change nothing.")
@json_option
@click.pass_context
def cleanup(ctx: click.Context, dry_run: bool, as_json: bool) -> None:
    """Delete rows past their retention (poisoned rows are kept)."""
    maintenance = extension(ctx).maintenance
    due = maintenance.cleanup(dry_run=True)
    if dry_run:
        _show(due, as_json, "would delete")
        return
    with progress_bar(due.total, "deleting") as bar:
        report = maintenance.cleanup(progress=bar.update)
    _show(report, as_json, "deleted")


@reliable.command(name="recover-stuck")
@json_option
@click.pass_context
def recover_stuck(ctx: click.Context, as_json: bool) -> None:
    """Hand back outbox rows and inbox marks whose owner stopped long ago."""
    _show(extension(ctx).maintenance.recover_stuck(), as_json, "recovered")
