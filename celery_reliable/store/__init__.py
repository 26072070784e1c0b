"""The reliable store: tables, engines, migrations, and the SQL adapter behind the inbox port."""

from .base import InboxStore, StatusRow
from .database import Database
from .sql import SqlStore
from .tables import Tables, build_tables

__all__ = ["Database", "InboxStore", "SqlStore", "StatusRow", "Tables", "build_tables"]
