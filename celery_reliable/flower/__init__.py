"""Dead letters inside Flower: ``celery -A app reliable flower [flower options]``.

Flower's application is built as ``celery flower`` builds it; then our pages are added with
Tornado's ``Application.add_handlers`` (which puts them ahead of Flower's catch-all 404) and
our template loader is given in the ``template_loader`` setting (see :mod:`.loader`), and its
events state ranks our final states first (see :mod:`.events`). No file of Flower's is
changed and nothing of Flower's is monkeypatched, so ``celery flower`` itself stays as it is.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any

from celery import Celery

from celery_reliable.extension import Reliable

from .events import reliable_events
from .handlers import urls
from .loader import loader
from .messages import MessageGroups

__all__ = ["create_app", "exposure_problem"]

ALLOW_FLAG = "--dead-letters-allow-unauthenticated"


def create_app(capp: Celery, reliable: Reliable, options: Any, settings: Mapping[str, Any]) -> Any:
    """Flower's application (``flower.app.Flower``) with the Dead Letters pages in it.

    ``options`` and ``settings`` are Flower's, after it parsed its command line, config file
    and ``FLOWER_*`` variables; ``--url_prefix`` applies to our pages as to Flower's.
    """
    from flower.app import Flower, rewrite_handler  # type: ignore[import-untyped]
    from flower.events import Events  # type: ignore[import-untyped]
    from tornado.ioloop import IOLoop
    from tornado.web import url

    io_loop = IOLoop.current()
    events = reliable_events(
        Events,
        capp=capp,
        io_loop=io_loop,
        db=options.db,
        persistent=options.persistent,
        state_save_interval=options.state_save_interval,
        enable_events=options.enable_events,
        max_workers_in_memory=options.max_workers,
        max_tasks_in_memory=options.max_tasks,
    )
    app = Flower(
        capp=capp,
        options=options,
        events=events,
        io_loop=io_loop,
        **{**settings, "template_loader": loader(settings["template_path"])},
    )
    groups = MessageGroups(reliable.database.engine, reliable.tables.dead_letter)
    specs = [url(*spec) for spec in urls(reliable.dead_letters, groups)]
    if options.url_prefix:
        specs = [rewrite_handler(spec, options.url_prefix) for spec in specs]
    app.add_handlers(r".*", specs)
    return app


def exposure_problem(options: Any, allow_unauthenticated: bool) -> str | None:
    """Why the pages must not be served with these Flower options; None when they may.

    Dead letters hold message arguments and tracebacks, and the pages replay and purge, so
    they need Flower's authentication (``--basic_auth`` or ``--auth``). Without it they are
    served only on a loopback address, and only when the operator says so explicitly.
    """
    if options.basic_auth or options.auth:
        return None
    how = "configure Flower authentication (--basic-auth=user:password or --auth=...)"
    if options.unix_socket:
        return f"refusing to serve dead letters on a unix socket without authentication: {how}"
    if not is_loopback(options.address):
        where = options.address or "every interface"
        return (
            f"refusing to serve dead letters without authentication on {where}: {how}, "
            f"or bind --address=127.0.0.1 and pass {ALLOW_FLAG}"
        )
    if not allow_unauthenticated:
        return (
            f"refusing to serve dead letters without authentication: {how}, or pass "
            f"{ALLOW_FLAG} to allow it on {options.address} (loopback) only"
        )
    return None


def is_loopback(address: str) -> bool:
    """Only this host can connect (an empty address is every interface)."""
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False
