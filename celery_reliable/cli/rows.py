"""``celery reliable outbox|inbox stats|list|retry``: the outbox's and the inbox's rows."""

from __future__ import annotations

import click

from celery_reliable.durations import readable
from celery_reliable.exceptions import InvalidArgument
from celery_reliable.store.base import Status

from .base import extension, reliable
from .output import COUNT, ROW_ID, Text, emit_json, json_option, plural, table

limit_option = click.option("--limit", type=COUNT, default=50, show_default=True)


@reliable.group()
def outbox() -> None:
    """Outbox rows: the relay's backlog, poisoned rows, manual retries."""


@outbox.command(name="stats")
@json_option
@click.pass_context
def outbox_stats(ctx: click.Context, as_json: bool) -> None:
    """Rows due, delayed, sent and poisoned; the oldest due row's age."""
    stats = extension(ctx).admin.outbox_stats()
    if as_json:
        emit_json(stats.as_dict())
        return
    rows = [(k, v) for k, v in stats.as_dict().items() if k != "oldest_due_age"]
    table(("STATE", "ROWS"), [*rows, ("oldest due", readable(stats.oldest_due_age))])


@outbox.command(name="list")
@click.option("--poisoned", is_flag=True, help="Poisoned rows instead of pending ones.")
@limit_option
@json_option
@click.pass_context
def outbox_list(ctx: click.Context, poisoned: bool, limit: int, as_json: bool) -> None:
    """Pending rows (oldest first), or with --poisoned the rows that gave up."""
    rows = extension(ctx).admin.outbox_rows(poisoned=poisoned, limit=limit)
    if as_json:
        emit_json(rows)
        return
    columns = ("id", "message_id", "task_name", "attempts", "available_at", "last_error")
    table([c.upper() for c in columns], [[row[c] for c in columns] for row in rows])


@outbox.command(name="retry")
@click.argument("row_ids", type=ROW_ID, nargs=-1, required=True)
@json_option
@click.pass_context
def outbox_retry(ctx: click.Context, row_ids: tuple[int, ...], as_json: bool) -> None:
    """Publish poisoned rows again (attempts reset). All or nothing."""
    try:
        count = extension(ctx).admin.retry_outbox(row_ids)
    except InvalidArgument as exc:
        raise click.UsageError(str(exc)) from exc
    if as_json:
        emit_json({"retried": count})
    else:
        click.echo(f"{plural(count, 'outbox row')} will be published again")


@reliable.group()
def inbox() -> None:
    """Inbox marks: counts by status, quarantined messages, manual retries."""


@inbox.command(name="stats")
@json_option
@click.pass_context
def inbox_stats(ctx: click.Context, as_json: bool) -> None:
    """Marks by status."""
    stats = extension(ctx).admin.inbox_stats()
    if as_json:
        emit_json(stats)
        return
    table(("STATUS", "MARKS"), list(stats.items()))


@inbox.command(name="list")
@click.option(
    "--state",
    type=click.Choice([s.value for s in Status]),
    default=Status.POISONED.value,
    show_default=True,
    help="Marks in this state.",
)
@click.option("--poisoned", is_flag=True, help="Quarantined messages (same as --state poisoned).")
@limit_option
@json_option
@click.pass_context
def inbox_list(ctx: click.Context, state: str, poisoned: bool, limit: int, as_json: bool) -> None:
    """(message id, handler key) marks in a state: by default the quarantined ones."""
    if poisoned and state != Status.POISONED.value:
        raise click.UsageError("give --poisoned or --state, not both")
    rows = extension(ctx).admin.inbox_marks(Status(state), limit=limit)
    if as_json:
        emit_json(rows)
        return
    columns = ("message_id", "handler_key", "status", "attempts", "last_error")
    table([c.upper() for c in columns], [[row[c] for c in columns] for row in rows])


@inbox.command(name="retry")
@click.argument("message_ids", type=Text(), nargs=-1, required=True)
@click.option("--handler-key", help="Only this handler key (default: all of the message's).")
@json_option
@click.pass_context
def inbox_retry(
    ctx: click.Context, message_ids: tuple[str, ...], handler_key: str | None, as_json: bool
) -> None:
    """Let quarantined messages run on their next delivery. All or nothing.

    Nothing is sent: use `dlq replay` to send a dead-lettered message again.
    """
    try:
        count = extension(ctx).admin.retry_inbox(message_ids, handler_key)
    except InvalidArgument as exc:
        raise click.UsageError(str(exc)) from exc
    if as_json:
        emit_json({"retried": count})
    else:
        click.echo(f"{plural(count, 'inbox mark')} will run again on the next delivery")
