"""How an idle relay waits for new outbox rows.

PostgreSQL: LISTEN on the channel the outbox trigger notifies at commit, so a new message
reaches the broker within milliseconds with no busy polling. Elsewhere: a timed sleep of
``reliable_relay_idle_interval``. Either way the wait ends early when the relay is stopped.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Protocol

from .database import Database
from .tables import Tables

logger = logging.getLogger(__name__)


class Wakeup(Protocol):
    def wait(self, timeout: float) -> None:
        """Return after ``timeout`` seconds, or sooner when new rows may be due."""

    def close(self) -> None: ...


class Sleep:
    def __init__(self, stop: threading.Event) -> None:
        self._stop = stop

    def wait(self, timeout: float) -> None:
        self._stop.wait(timeout)

    def close(self) -> None:
        pass


class PostgresNotifications:
    """A dedicated autocommit connection that LISTENs for the outbox trigger."""

    #: Longest single wait, so a stop request is noticed promptly.
    SLICE = 0.5

    def __init__(self, database: Database, tables: Tables, stop: threading.Event) -> None:
        self._stop = stop
        self._channel = f"{tables.prefix}outbox"
        raw = database.engine.raw_connection()
        conn: Any = raw.driver_connection  # (detach() below clears it)
        raw.detach()  # ours for as long as the relay runs, never back in the pool
        self._raw: Any = raw
        conn.autocommit = True
        conn.execute(f'LISTEN "{self._channel}"')
        self._conn = conn

    def wait(self, timeout: float) -> None:
        remaining = timeout
        while remaining > 0 and not self._stop.is_set():
            step = min(self.SLICE, remaining)
            if any(True for _ in self._conn.notifies(timeout=step, stop_after=1)):
                self._drain()
                return
            remaining -= step

    def _drain(self) -> None:
        # One wake-up per burst: the relay drains the whole table anyway.
        for _ in self._conn.notifies(timeout=0):
            pass

    def close(self) -> None:
        try:
            self._raw.close()
        except Exception:  # closing a broken connection must not mask why the relay stopped
            logger.debug("closing the LISTEN connection failed", exc_info=True)


def wakeup_for(database: Database, tables: Tables, stop: threading.Event) -> Wakeup:
    if database.dialect == "postgresql" and database.url.get_driver_name() == "psycopg":
        try:
            return PostgresNotifications(database, tables, stop)
        except Exception:  # e.g. a transaction-mode pooler: polling still delivers everything
            logger.warning("relay cannot LISTEN for commits; polling instead", exc_info=True)
    return Sleep(stop)
