"""How an idle relay waits for new outbox rows.

PostgreSQL: LISTEN on the channel the outbox trigger notifies at commit, so a new message
reaches the broker within milliseconds with no busy polling. Elsewhere: a timed sleep of
``reliable_relay_idle_interval`` (also PostgreSQL's, while its LISTEN connection is lost and
being reconnected). Either way the wait ends early when the relay is stopped.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Protocol

from celery_reliable.outage import Outage

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
    """A dedicated autocommit connection that LISTENs for the outbox trigger.

    The connection can go away at any time (a restart, a failover, ``pg_terminate_backend``,
    a proxy's idle timeout, or the store down when the relay starts). The relay must not
    die of it: until the connection is back, waiting is a plain sleep (the relay still
    looks for rows every idle interval, as on other stores), and a new connection is tried
    with backoff. The first wait after reconnecting returns at once: notifications sent
    while nobody listened are lost, so the relay looks at the table now.
    """

    #: Longest single wait, so a stop request is noticed promptly.
    SLICE = 0.5

    def __init__(self, database: Database, tables: Tables, stop: threading.Event) -> None:
        self._database = database
        self._stop = stop
        self._channel = f"{tables.prefix}outbox"
        self._raw: Any = None
        self._conn: Any = None
        self._outage = Outage("relay LISTEN connection", logger)
        self._connect()

    def _connect(self) -> bool:
        try:
            raw = self._database.engine.raw_connection()
            conn: Any = raw.driver_connection  # (detach() below clears it)
            raw.detach()  # ours for as long as the relay runs, never back in the pool
            self._raw = raw
            conn.autocommit = True
            conn.execute(f'LISTEN "{self._channel}"')
        except Exception as exc:
            self._disconnect()
            self._outage.failed(exc, "polling meanwhile; reconnecting")
            return False
        self._conn = conn
        self._outage.recovered()
        return True

    def wait(self, timeout: float) -> None:
        if self._conn is None:
            if self._outage.due() and self._connect():
                return  # what was committed while nobody listened is due now
            self._stop.wait(min(timeout, max(self._outage.remaining(), self.SLICE)))
            return
        try:
            self._listen(timeout)
        except Exception as exc:  # the connection is gone; the relay goes on without it
            self._disconnect()
            self._outage.failed(exc, "polling meanwhile; reconnecting")

    def _listen(self, timeout: float) -> None:
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

    def _disconnect(self) -> None:
        raw, self._raw, self._conn = self._raw, None, None
        if raw is None:
            return
        try:
            raw.close()
        except Exception:  # closing a broken connection must not mask why it broke
            logger.debug("closing the LISTEN connection failed", exc_info=True)

    def close(self) -> None:
        self._disconnect()


def wakeup_for(database: Database, tables: Tables, stop: threading.Event) -> Wakeup:
    if database.dialect == "postgresql" and database.url.get_driver_name() == "psycopg":
        return PostgresNotifications(database, tables, stop)
    return Sleep(stop)
