"""Apply and inspect the shipped Alembic migrations without an alembic.ini.

The version table carries the store's prefix, so the application's own Alembic history is
never touched.
"""

from __future__ import annotations

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from .database import Database
from .tables import Tables

SCRIPT_LOCATION = "celery_reliable.store:migrations"


def _config(database: Database, tables: Tables) -> Config:
    config = Config()
    config.set_main_option("script_location", SCRIPT_LOCATION)
    config.attributes["tables"] = tables
    config.attributes["engine"] = database.engine
    return config


def upgrade(database: Database, tables: Tables, revision: str = "head") -> None:
    """Migrate the store to ``revision`` (idempotent)."""
    command.upgrade(_config(database, tables), revision)


def current(database: Database, tables: Tables) -> str | None:
    """The revision the store is at; None before the first upgrade."""
    with database.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"version_table": tables.version_table})
        return context.get_current_revision()


def head(database: Database, tables: Tables) -> str | None:
    """The newest shipped revision."""
    return ScriptDirectory.from_config(_config(database, tables)).get_current_head()


def ships(database: Database, tables: Tables, revision: str) -> bool:
    """Whether this package ships ``revision``; a newer release's revision is unknown here."""
    script = ScriptDirectory.from_config(_config(database, tables))
    return revision in {rev.revision for rev in script.walk_revisions()}
