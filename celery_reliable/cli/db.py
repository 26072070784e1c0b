"""``celery reliable db upgrade|current``: the store's schema."""

from __future__ import annotations

import click

from celery_reliable.store import migrate

from .base import extension, reliable
from .output import emit_json, json_option


@reliable.group()
def db() -> None:
    """The reliable store's schema (Alembic migrations shipped in the package)."""


@db.command()
@click.option("--revision", default="head", show_default=True, help="Target revision.")
@click.pass_context
def upgrade(ctx: click.Context, revision: str) -> None:
    """Apply the shipped migrations up to REVISION."""
    ext = extension(ctx)
    migrate.upgrade(ext.database, ext.tables, revision)
    click.echo(
        f"store at revision {migrate.current(ext.database, ext.tables)} "
        f"({ext.database.url.render_as_string(hide_password=True)})"
    )


@db.command()
@json_option
@click.pass_context
def current(ctx: click.Context, as_json: bool) -> None:
    """Print the store's revision and the newest shipped one."""
    ext = extension(ctx)
    revision = migrate.current(ext.database, ext.tables)
    head = migrate.head(ext.database, ext.tables)
    if as_json:
        emit_json({"revision": revision, "head": head, "up_to_date": revision == head})
        return
    state = "up to date" if revision == head else f"behind head {head}: run `db upgrade`"
    click.echo(f"{revision or 'none'} ({state})")
