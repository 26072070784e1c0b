"""The root of the ``celery reliable`` group and what every sub-command needs from it.

An operator at 3 a.m. who runs a command against a store that is down, a database that
does not exist or a schema that was never migrated needs the one line that says so, not
a traceback: :class:`ReliableGroup` turns those failures into :class:`Unavailable`
(exit 3, distinct from bad arguments, 2, and an unhealthy probe, 1).
"""

from __future__ import annotations

from typing import Any

import click
from kombu.exceptions import OperationalError as BrokerError
from sqlalchemy import make_url
from sqlalchemy.exc import DBAPIError

from celery_reliable.exceptions import ConfigurationError
from celery_reliable.extension import Reliable
from celery_reliable.store import migrate


class Misconfigured(click.ClickException):
    """The app's ``reliable_*`` settings or tasks are wrong: one line, exit 2, no usage text
    (the command was typed right)."""

    exit_code = 2


class Unavailable(click.ClickException):
    """A store or service the command needs cannot be reached, or the store has no schema."""

    exit_code = 3


def _services_errors() -> tuple[type[BaseException], ...]:
    """What a dead service raises: the store's driver, the broker, Redis (if installed)."""
    errors: list[type[BaseException]] = [DBAPIError, BrokerError, ConnectionError, TimeoutError]
    try:
        from redis.exceptions import ConnectionError as RedisDown
        from redis.exceptions import TimeoutError as RedisSlow
    except ImportError:  # the redis extra is not installed: nothing can raise them
        pass
    else:
        errors += [RedisDown, RedisSlow]
    return tuple(errors)


def _first_line(exc: BaseException) -> str:
    cause = getattr(exc, "orig", None) or exc  # SQLAlchemy wraps the driver's error
    lines = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {lines[0]}" if lines else type(cause).__name__


def store_problem(ext: Reliable, exc: BaseException) -> str:
    """The one line for a failed command: the store unreachable, its schema missing or
    behind (with the ``db upgrade`` to run), or another service down (the Redis of
    ``reliable_redis_url`` named as such: the operator must know which one to look at)."""
    url = ext.database.url.render_as_string(hide_password=True)
    if isinstance(exc, DBAPIError):
        try:
            migrate.current(ext.database, ext.tables)
        except DBAPIError as down:
            return f"the reliable store {url} is unreachable: {_first_line(down)}"
        try:
            ext.check_schema()
        except ConfigurationError as behind:
            return str(behind)
        return f"the reliable store {url} refused the command: {_first_line(exc)}"
    if type(exc).__module__.partition(".")[0] == "redis" and ext.settings.redis_url:
        redis = make_url(ext.settings.redis_url).render_as_string(hide_password=True)
        return f"Redis at reliable_redis_url {redis} is unreachable: {_first_line(exc)}"
    return f"a service is unreachable: {_first_line(exc)}"


class ReliableGroup(click.Group):
    """The ``reliable`` group: a dead service or a missing schema is one line, exit 3."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except _services_errors() as exc:
            app = getattr(ctx.find_root().obj, "app", None)
            if app is None:
                raise
            raise Unavailable(store_problem(Reliable.of(app), exc)) from None


@click.group(name="reliable", cls=ReliableGroup)
def reliable() -> None:
    """celery_reliable: schema, inbox, outbox and dead letters."""


def extension(ctx: click.Context) -> Reliable:
    """The app's extension, validated; a usage error (exit 2) if the app has none."""
    app: Any = getattr(ctx.find_root().obj, "app", None)
    if app is None:
        raise click.UsageError("no app: run as `celery -A yourapp reliable ...`")
    try:
        ext = Reliable.of(app)
        ext.check()
    except ConfigurationError as exc:
        raise Misconfigured(str(exc)) from exc
    return ext
