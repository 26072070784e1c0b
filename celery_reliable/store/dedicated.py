"""A long-lived DBAPI connection of one engine, for the hot statements of one process.

Through SQLAlchemy a statement costs about 110 µs of CPU over the driver's own (pool
checkout and checkin, Core execution), and the inbox runs two per task: a third of a
reliable no-op's pool-process CPU (issue #15). A :class:`Dedicated` connection skips both.
It is taken from the engine's pool (so the engine's connect arguments, connect events and
pre-ping apply to it), detached from the pool, and kept for the process:

- never across a fork: a process whose pid is not the one that took it forgets it without
  closing it (closing would end the parent's session; psycopg never closes a connection
  in a child either) and takes its own;
- never past its engine's pool: ``Database.dispose`` and the recycling after a disconnect
  replace the pool, and the connection goes with it;
- after a quiet spell (:data:`IDLE_PING`), pinged before use: a connection a firewall or
  a server restart cut while idle is replaced, and no message is deferred for it;
- closed after any error (it may be broken or in an unknown state); the next call takes a
  fresh one;
- one caller at a time: a caller that finds it busy (another thread of ``-P threads``)
  is told so and uses the engine as before, so threads never queue behind one connection
  and a process never holds more than one of them per engine.

Errors come out as SQLAlchemy's ``DBAPIError`` subclasses, exactly as from the engine, so
the inbox (ClaimUncertain) and ``delivery/guard.py`` (outage or the message's fault)
classify them unchanged; a disconnect also recycles the store's other engines, as one
seen through an engine does (``Database.recycle``).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Mapping
from contextlib import suppress
from typing import Any, TypeVar

from sqlalchemy import Engine
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import Pool
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler

T = TypeVar("T")

#: Seconds unused after which the connection is pinged (one round trip) before its next use.
IDLE_PING = 10.0


class DriverStatement:
    """A SQLAlchemy statement compiled once for a dialect, to run on the driver directly.

    The SQL is exactly what the engine would send; :meth:`bind` completes the caller's
    parameters with the statement's own literals and applies each column type's bind
    processing (aware datetimes to naive UTC, ``store/tables.py``), as Core execution does.
    """

    def __init__(self, statement: ClauseElement, dialect: Dialect) -> None:
        compiled = statement.compile(dialect=dialect)
        assert isinstance(compiled, SQLCompiler)  # a DML statement's compiler
        self.sql = str(compiled)
        self._literals = {
            name: bind.value for bind, name in compiled.bind_names.items() if not bind.required
        }
        processors = (
            (name, bind.type.dialect_impl(dialect).bind_processor(dialect))
            for bind, name in compiled.bind_names.items()
        )
        self._processors = {name: process for name, process in processors if process is not None}

    def bind(self, params: Mapping[str, Any]) -> dict[str, Any]:
        bound = {**self._literals, **params}
        for name, process in self._processors.items():
            bound[name] = process(bound[name])
        return bound


class Dedicated:
    """This process's own connection of the engine ``engine()`` returns (see the module)."""

    def __init__(self, engine: Callable[[], Engine], on_disconnect: Callable[[], None]) -> None:
        self._engine = engine
        self._on_disconnect = on_disconnect
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._connection: Any = None
        self._pool: Pool | None = None
        self._used_at = 0.0

    def run(self, call: Callable[[Any], T], statement: str, params: Mapping[str, Any]) -> T | None:
        """``call(dbapi_connection)``'s value; None, without calling it, when it is busy.

        ``statement`` and ``params`` are what ``call`` executes, for the error's message.
        """
        if self._pid != os.getpid():
            self._forked()
        if not self._lock.acquire(blocking=False):
            return None
        try:
            engine = self._engine()
            try:
                value = call(self._connected(engine))
            except BaseException as exc:
                error = self._failed(exc, engine, statement, params)
                if error is exc:
                    raise
                raise error from exc
            self._used_at = time.monotonic()
            return value
        finally:
            self._lock.release()

    def _connected(self, engine: Engine) -> Any:
        """The connection, taken again when it is gone, stale, or idle and dead."""
        connection = self._connection
        if connection is not None and self._pool is not engine.pool:
            self._discard()
        elif connection is not None and time.monotonic() - self._used_at > IDLE_PING:
            try:
                engine.dialect.do_ping(connection)
            except engine.dialect.loaded_dbapi.Error:
                self._discard()
        if self._connection is None:
            pool = engine.pool
            proxied = pool.connect()
            proxied.detach()  # ours until discarded: the pool neither resets nor reuses it
            self._connection, self._pool = proxied.dbapi_connection, pool
        return self._connection

    def _failed(
        self, exc: BaseException, engine: Engine, statement: str, params: Mapping[str, Any]
    ) -> BaseException:
        """Close the connection; ``exc`` as the engine would have raised it."""
        dialect = engine.dialect
        driver_error = dialect.loaded_dbapi.Error
        if not isinstance(exc, driver_error):
            self._discard()
            return exc
        disconnect = dialect.is_disconnect(exc, self._connection, None)
        self._discard()
        if disconnect:
            self._on_disconnect()
        return DBAPIError.instance(
            statement,
            dict(params),
            exc,
            driver_error,
            hide_parameters=engine.hide_parameters,
            connection_invalidated=disconnect,
            dialect=dialect,
        )

    def close(self) -> None:
        """Close the connection (``Database.dispose``); a forked child only forgets it."""
        if self._pid != os.getpid():  # its lock may have been copied held: not taken
            self._forked()
            return
        with self._lock:
            self._discard()

    def _discard(self) -> None:
        connection, self._connection, self._pool = self._connection, None, None
        if connection is not None:
            with suppress(Exception):  # it is being thrown away because it may be broken
                connection.close()

    def _forked(self) -> None:
        """In a forked child: drop the parent's connection unclosed, and its lock's state."""
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._connection = self._pool = None
