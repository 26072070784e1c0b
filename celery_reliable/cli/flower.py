"""``celery reliable flower``: Flower, with a Dead Letters page.

Flower's command is followed step by step, through Flower's own functions, so every Flower
option (command line, ``flowerconfig.py``, ``FLOWER_*`` variables) works as with
``celery flower``; only the application it serves has our pages added. Before serving,
the command refuses to expose dead letters without Flower authentication, unless bound to
a loopback address and explicitly allowed.
"""

from __future__ import annotations

import atexit
import contextlib
import signal
import sys

import click

from .base import extension, reliable


@reliable.command(context_settings={"ignore_unknown_options": True})
@click.option(
    "--dead-letters-allow-unauthenticated",
    "allow_unauthenticated",
    is_flag=True,
    help="Serve the Dead Letters page without Flower authentication (loopback address only).",
)
@click.argument("flower_args", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def flower(ctx: click.Context, allow_unauthenticated: bool, flower_args: tuple[str, ...]) -> None:
    """Flower with a Dead Letters page; every Flower option works (--port=5555, --basic-auth=)."""
    try:
        from flower import command  # type: ignore[import-untyped]
    except ImportError:
        raise click.UsageError(
            "Flower is not installed: install the flower extra "
            "(in the clone: pip install -e '.[flower]')"
        ) from None
    from celery_reliable.flower import create_app, exposure_problem

    ext = extension(ctx)
    # Given the ``reliable`` group's context, Flower checks the ``celery`` options above it.
    command.warn_about_celery_args_used_in_flower_command(ctx.parent, flower_args)
    command.apply_env_options()
    command.apply_options(sys.argv[0], flower_args)
    command.extract_settings()
    problem = exposure_problem(command.options, allow_unauthenticated)
    if problem:
        raise click.UsageError(problem)
    command.setup_logging()

    app = create_app(ext.app, ext, command.options, command.settings)
    atexit.register(app.stop)
    signal.signal(signal.SIGTERM, command.sigterm_handler)
    port = app.start_http_server()
    if not ctx.find_root().obj.quiet:
        command.print_banner(ext.app, "ssl_options" in command.settings, port)
    with contextlib.suppress(KeyboardInterrupt, SystemExit):  # as Flower: a clean stop
        app.start()
