"""SQLAlchemy engines for the store, re-created in every forked process.

Engines share one URL: ``engine`` for the caller's transactions (``self.transaction()``),
``autocommit`` for the inbox's single-statement writes, so that a completion costs one round
trip instead of BEGIN + statement + COMMIT, and ``claims`` for claims. On PostgreSQL claims
commit with ``synchronous_commit=off``: a claim is an attempt counter, and the completion
that follows it commits synchronously, which flushes the claim too (WAL is flushed in order).
Only a database crash in between can lose a claim; the inbox treats a vanished claim as "try
again later", never as done. That saves one disk flush per task. SQLite has no server round
trips; there all are one engine whose transactions start with ``BEGIN IMMEDIATE``, which
keeps concurrent worker processes on one host from deadlocking on lock upgrades.

On PostgreSQL with psycopg 3 the claim and the completion mark skip SQLAlchemy: each runs on
a dedicated connection taken from ``claims`` or ``autocommit`` (``store/dedicated.py``,
``store/psycopg_store.py``), with the same commit semantics.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Mapping
from typing import Any, Literal

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url

from celery_reliable.exceptions import ConfigurationError

from .dedicated import Dedicated

#: The package is not on an index yet: the hints install its extra from the clone.
_DRIVER_HINTS = {
    "psycopg": "install the postgres extra (in the clone: pip install -e '.[postgres]')",
    "pymysql": "install the mysql extra (in the clone: pip install -e '.[mysql]')",
}
_LIVE: weakref.WeakSet[Database] = weakref.WeakSet()


class Database:
    """The store's engines for the current process."""

    def __init__(self, url: str, engine_options: Mapping[str, Any] | None = None) -> None:
        self.url = make_url(url)
        self._options = dict(engine_options or {})
        self._engine: Engine | None = None
        self._autocommit: Engine | None = None
        self._claims: Engine | None = None
        self._packet_limit: int | None = None
        self._dedicated: dict[str, Dedicated] = {}
        _LIVE.add(self)

    @property
    def dialect(self) -> str:
        """The backend name: ``postgresql``, ``mysql``, ``mariadb`` or ``sqlite``."""
        return self.url.get_backend_name()

    @property
    def engine(self) -> Engine:
        """The transactional engine (sessions, migrations)."""
        if self._engine is None:
            self._engine = self._create()
        return self._engine

    @property
    def autocommit(self) -> Engine:
        """The engine for single-statement writes that commit on their own."""
        if self.dialect == "sqlite":
            return self.engine
        if self._autocommit is None:
            self._autocommit = self._create(isolation_level="AUTOCOMMIT")
        return self._autocommit

    @property
    def claims(self) -> Engine:
        """Autocommit engine for claims: asynchronous commit on PostgreSQL (see above)."""
        if self.dialect != "postgresql":
            return self.autocommit
        if self._claims is None:
            connect_args = dict(self._options.get("connect_args", {}))
            options = connect_args.get("options", "")
            connect_args["options"] = f"{options} -c synchronous_commit=off".strip()
            self._claims = self._create(isolation_level="AUTOCOMMIT", connect_args=connect_args)
        return self._claims

    def dedicated(self, kind: Literal["claims", "autocommit"]) -> Dedicated:
        """This process's own long-lived connection of the ``kind`` engine, for hot statements.

        One per engine and process, shared by every store of this database; see
        ``store/dedicated.py`` for why and how it stays safe (forks, outages, threads).
        """
        found = self._dedicated.get(kind)
        if found is None:
            found = self._dedicated[kind] = Dedicated(lambda: getattr(self, kind), self.recycle)
        return found

    def packet_limit(self) -> int | None:
        """The largest statement the server accepts, in bytes; None if it has no such limit.

        MySQL and MariaDB refuse a statement over ``max_allowed_packet`` (16 MB by default)
        by closing the connection, which looks like an outage. Writers of rows that can be
        megabytes (dead letters, stored results) check against this first (``store/limits.py``).
        Read once per process.
        """
        if self.dialect not in ("mysql", "mariadb"):
            return None
        if self._packet_limit is None:
            with self.engine.connect() as conn:
                limit = conn.exec_driver_sql("SELECT @@max_allowed_packet").scalar_one()
            self._packet_limit = int(limit)
        return self._packet_limit

    def _engines(self) -> list[Engine]:
        return [e for e in (self._engine, self._autocommit, self._claims) if e is not None]

    def dispose(self) -> None:
        """Close every pooled and dedicated connection (tests, shutdown)."""
        for dedicated in self._dedicated.values():
            dedicated.close()
        for engine in self._engines():
            engine.dispose()
        self._engine = self._autocommit = self._claims = None

    def _forget_after_fork(self) -> None:
        # The parent's sockets must not be closed (or used) by the child: detach them.
        for engine in self._engines():
            engine.dispose(close=False)
        self._engine = self._autocommit = self._claims = None

    def _create(self, **extra: Any) -> Engine:
        options = {**self._options, **extra}
        try:
            engine = create_engine(self.url, **options)
        except ModuleNotFoundError as exc:
            hint = _DRIVER_HINTS.get(exc.name or "", "install the database driver")
            raise ConfigurationError(
                f"setting 'reliable_database_url': driver {exc.name!r} is missing ({hint})"
            ) from exc
        except TypeError as exc:
            raise ConfigurationError(f"setting 'reliable_engine_options': {exc}") from exc
        if self.dialect == "sqlite":
            _make_sqlite_safe(engine)
        event.listen(engine, "handle_error", self._on_error)
        return engine

    def recycle(self, *, but: Engine | None = None) -> None:
        """A dropped connection on one engine means the others' pooled ones are dead too.

        Each engine would otherwise fail once more on its next checkout (a deferred message
        per engine per outage): every pool is replaced at once, ``but`` the one SQLAlchemy
        has already recycled itself. Dedicated connections (``store/dedicated.py``) go with
        their engine's pool, and call this when they see a disconnect first.
        """
        for engine in self._engines():
            if engine is not but:
                engine.dispose()

    def _on_error(self, context: Any) -> None:
        if context.is_disconnect:
            self.recycle(but=context.engine)


def _make_sqlite_safe(engine: Engine) -> None:
    """WAL, a busy timeout, and BEGIN IMMEDIATE: SQLite safe for several processes of one host."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # SQLAlchemy emits BEGIN itself (below)
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def _after_fork_in_child() -> None:
    for database in list(_LIVE):
        database._forget_after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)
