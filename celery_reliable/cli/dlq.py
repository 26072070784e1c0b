"""``celery reliable dlq ...``: review, replay and purge dead-lettered messages."""

from __future__ import annotations

from datetime import datetime, timedelta

import click

from celery_reliable.dead_letters import DeadLetterFilter, DeadLetterReason, DeadLetters
from celery_reliable.durations import readable

from .base import extension, reliable
from .output import (
    COUNT,
    ROW_ID,
    Age,
    Moment,
    PerSecond,
    Text,
    emit_json,
    json_option,
    plural,
    progress_bar,
    table,
)

REASONS = click.Choice([r.value for r in DeadLetterReason])


def _letters(ctx: click.Context) -> DeadLetters:
    return extension(ctx).dead_letters


def _counted(as_json: bool, key: str, count: int, sentence: str) -> None:
    """A count of entries: ``{"replayed": 2}`` for scripts, "replayed 2 entries" for people."""
    if as_json:
        emit_json({key: count})
    else:
        click.echo(sentence.format(plural(count, "entry", "entries")))


@reliable.group()
def dlq() -> None:
    """The dead-letter store: list, show, replay, purge, stats."""


@dlq.command(name="list")
@click.option("--reason", type=REASONS, help="Only this reason.")
@click.option("--task", "task_name", type=Text(), help="Only this task name.")
@click.option("--since", type=Moment(), help="Dead-lettered at or after (ISO time, or '2h').")
@click.option("--until", type=Moment(), help="Dead-lettered before (ISO time, or '2h').")
@click.option("--replayed/--not-replayed", default=None, help="Only replayed / not replayed.")
@click.option("--limit", type=COUNT, default=50, show_default=True)
@click.option("--offset", type=COUNT, default=0, show_default=True)
@json_option
@click.pass_context
def list_(
    ctx: click.Context,
    reason: str | None,
    task_name: str | None,
    since: datetime | None,
    until: datetime | None,
    replayed: bool | None,
    limit: int,
    offset: int,
    as_json: bool,
) -> None:
    """Entries, newest first."""
    matching = DeadLetterFilter(reason, task_name, since, until, replayed)
    entries = _letters(ctx).list(matching=matching, limit=limit, offset=offset)
    if as_json:
        emit_json([e.as_dict() for e in entries])
        return
    table(
        ("ID", "DEAD-LETTERED", "REASON", "TASK", "MESSAGE", "RUNS", "REPLAYED", "ERROR"),
        [
            (
                e.id,
                e.dead_lettered_at,
                e.reason.value,
                e.task_name,
                e.message_id,
                e.attempts,
                e.replay_count,
                f"{e.exception_type}: {e.exception_message}",
            )
            for e in entries
        ],
    )


@dlq.command()
@click.argument("entry_id", type=ROW_ID)
@json_option
@click.pass_context
def show(ctx: click.Context, entry_id: int, as_json: bool) -> None:
    """One entry, whole (with its traceback)."""
    entry = _letters(ctx).get(entry_id)
    if entry is None:
        raise click.UsageError(f"no dead-letter entry {entry_id}")
    data = entry.as_dict()
    if as_json:
        emit_json(data)
        return
    trace = data.pop("traceback")
    width = max(len(k) for k in data)
    for key, value in data.items():
        click.echo(f"{key.ljust(width)}  {value}")
    if trace:
        click.echo(f"\n{trace.rstrip()}")


@dlq.command()
@click.argument("entry_ids", type=ROW_ID, nargs=-1)
@click.option("--reason", type=REASONS, help="Replay every entry with this reason.")
@click.option("--task", "task_name", type=Text(), help="Replay every entry of this task.")
@click.option("--limit", type=COUNT, help="At most this many.")
@click.option("--dry-run", is_flag=True, help="Say how many would be replayed; change nothing.")
@click.option("--rate", type=PerSecond(), help="Replays per second.")
@click.option("--stop-after-failures", type=click.IntRange(min=1), help="Stop after N failures.")
@json_option
@click.pass_context
def replay(
    ctx: click.Context,
    entry_ids: tuple[int, ...],
    reason: str | None,
    task_name: str | None,
    limit: int | None,
    dry_run: bool,
    rate: float | None,
    stop_after_failures: int | None,
    as_json: bool,
) -> None:
    """Publish entries again through the outbox: by ID, or by --reason/--task."""
    letters = _letters(ctx)
    if entry_ids and (reason or task_name):
        raise click.UsageError("give entry IDs or --reason/--task, not both")
    if not entry_ids and not (reason or task_name):
        raise click.UsageError("give entry IDs, or --reason/--task to replay a batch")
    if not entry_ids:
        matching = DeadLetterFilter(reason, task_name)
        due = letters.replay_batch(matching=matching, limit=limit, dry_run=True)
        if dry_run:
            _counted(as_json, "would_replay", due, "would replay {}")
            return
        with progress_bar(due, "replaying") as bar:
            count = letters.replay_batch(
                matching=matching,
                limit=limit,
                rate_limit=rate,
                stop_after_failures=stop_after_failures,
                progress=bar.update,
            )
        _counted(as_json, "replayed", count, "replayed {}")
        return
    missing = [i for i in entry_ids if letters.get(i) is None]
    if missing:  # checked first, so a typo changes nothing
        raise click.UsageError(f"no dead-letter entry {', '.join(map(str, missing))}")
    if dry_run:
        _counted(as_json, "would_replay", len(entry_ids), "would replay {}")
        return
    tasks: dict[int, str] = {}
    for entry_id in entry_ids:
        try:
            tasks[entry_id] = letters.replay(entry_id)
        except Exception as exc:
            raise click.ClickException(f"entry {entry_id} not replayed: {exc}") from exc
        if not as_json:
            click.echo(f"entry {entry_id} replayed as task {tasks[entry_id]}")
    if as_json:
        emit_json({"replayed": len(tasks), "task_ids": tasks})


@dlq.command()
@click.option("--older-than", type=Age(), required=True, help="Age, such as 30d.")
@click.option("--dry-run", is_flag=True, help="Count what would be purged; change nothing.")
@json_option
@click.pass_context
def purge(ctx: click.Context, older_than: timedelta, dry_run: bool, as_json: bool) -> None:
    """Delete entries dead-lettered longer ago than --older-than."""
    letters = _letters(ctx)
    if dry_run:  # what purge_older_than deletes
        due = letters.count(matching=DeadLetterFilter.older_than(older_than))
        _counted(as_json, "would_purge", due, "would purge {}")
        return
    _counted(as_json, "purged", letters.purge_older_than(older_than), "purged {}")


@dlq.command()
@json_option
@click.pass_context
def stats(ctx: click.Context, as_json: bool) -> None:
    """How many messages and entries, entries by reason, task and failure group, and the
    oldest one's age (a replay that fails again adds an entry to its message)."""
    statistics = _letters(ctx).statistics()
    if as_json:
        emit_json(statistics.as_dict())
        return
    click.echo(f"messages: {statistics.messages}")
    click.echo(f"entries: {statistics.count}")
    click.echo(f"oldest: {readable(statistics.oldest_age)}")
    if not statistics.count:
        return  # nothing to break down
    for title, counts in (
        ("REASON", statistics.by_reason),
        ("TASK", statistics.by_task),
        ("FAILURE GROUP", statistics.by_failure_group),
    ):
        click.echo("")
        table((title, "COUNT"), sorted(counts.items(), key=lambda kv: -kv[1]))
