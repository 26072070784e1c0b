"""``celery reliable relay [--once]``: publish committed outbox rows to the broker."""

from __future__ import annotations

import signal
import threading
from types import FrameType

import click

from .base import extension, reliable
from .output import progress_bar


@reliable.command()
@click.option("--once", is_flag=True, help="Publish everything that is due, then exit.")
@click.pass_context
def relay(ctx: click.Context, once: bool) -> None:
    """Relay outbox rows to the broker (several relays may run at once)."""
    ext = extension(ctx)
    if once:
        try:
            with progress_bar(ext.admin.outbox_stats().due, "relaying") as bar:
                sent = ext.relay.drain(progress=bar.update)
        except Exception as exc:  # the rows were handed back; nothing is lost
            raise click.ClickException(f"relay failed, unsent rows kept: {exc}") from exc
        finally:
            ext.relay.close()
        click.echo(f"relayed {sent} messages")
        return
    stop = threading.Event()

    def _stop(signum: int, frame: FrameType | None) -> None:
        click.echo("relay stopping after the current batch", err=True)
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    click.echo("relay running; SIGTERM or Ctrl-C stops it after the current batch", err=True)
    ext.relay.run(stop)
