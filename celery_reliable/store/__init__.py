"""The reliable store: tables, engines, migrations, and the SQL adapter behind the inbox port."""

from .base import InboxStore, StatusRow
from .database import Database
from .psycopg_store import PsycopgStore
from .sql import SqlStore
from .tables import Tables, build_tables


def inbox_store(database: Database, tables: Tables) -> SqlStore:
    """The inbox adapter for ``database``: its hot statements on the driver where that pays.

    psycopg 3 runs them as prepared statements on a dedicated connection (PsycopgStore);
    PyMySQL and sqlite3 keep SQLAlchemy's path.
    """
    if database.dialect == "postgresql" and database.url.get_driver_name() == "psycopg":
        return PsycopgStore(database, tables)
    return SqlStore(database, tables)


__all__ = [
    "Database",
    "InboxStore",
    "PsycopgStore",
    "SqlStore",
    "StatusRow",
    "Tables",
    "build_tables",
    "inbox_store",
]
