"""``celery reliable relay [--once] [--loglevel=INFO]``: publish committed outbox rows.

At ``--loglevel=INFO`` every batch is logged (how many, how fast, how long the oldest
waited), which is what an operator looks at when the outbox backlog grows.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

import click

from .base import extension, reliable
from .output import plural, progress_bar

LOG_LEVELS = click.Choice(["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"], case_sensitive=False)


@reliable.command()
@click.option("--once", is_flag=True, help="Publish everything that is due, then exit.")
@click.option(
    "-l", "--loglevel", type=LOG_LEVELS, default="WARNING", show_default=True,
    help="INFO logs every batch.",
)  # fmt: skip
@click.pass_context
def relay(ctx: click.Context, once: bool, loglevel: str) -> None:
    """Relay outbox rows to the broker (several relays may run at once)."""
    logging.basicConfig(
        level=loglevel.upper(), format="[%(asctime)s: %(levelname)s/%(name)s] %(message)s"
    )
    ext = extension(ctx)
    if once:
        try:
            with progress_bar(ext.admin.outbox_stats().due, "relaying") as bar:
                sent = ext.relay.drain(progress=bar.update)
        except Exception as exc:  # the rows were handed back; nothing is lost
            raise click.ClickException(f"relay failed, unsent rows kept: {exc}") from exc
        finally:
            ext.relay.close()
        click.echo(f"relayed {plural(sent, 'message')}")
        return
    stop = threading.Event()

    def _stop(signum: int, frame: FrameType | None) -> None:
        click.echo("relay stopping after the current batch", err=True)
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    click.echo("relay running; SIGTERM or Ctrl-C stops it after the current batch", err=True)
    ext.relay.run(stop)
