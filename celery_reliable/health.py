"""Health probes: is this host's reliable machinery able to work (ready), and alive (live)?

``celery -A app reliable health --ready|--live`` exits 0 when healthy (``degraded`` is
healthy, with a warning) and 1 when not, for Kubernetes exec probes.

- **live**: this host's relay loop, if it runs one, has completed a cycle within
  ``reliable_unhealthy_after``. A store or broker outage is *not* a liveness failure:
  restarting the process would not bring them back, and the relay waits for them anyway.
- **ready**: the store answers, the broker accepts a connection, the outbox is draining
  (no due row older than ``reliable_unhealthy_after``: this is what a stuck relay looks
  like from anywhere, even when the relay runs on another host), this host's relay loop
  is fresh, and the dead letters awaiting review are within
  ``reliable_dead_letter_degraded_depth`` (above: degraded).

A relay proves its loop by touching a heartbeat file after every cycle, idle cycles
included, so an idle relay is healthy; so is one waiting out an outage, which still cycles.
A relay that stops cleanly removes the file; a loop that dies leaves it stale, with its
cause, so ``--live`` fails. Each check has a time limit, so a probe never hangs
on a dead service.
"""

from __future__ import annotations

import concurrent.futures
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import text

from .durations import readable

if TYPE_CHECKING:
    from kombu.connection import Connection

    from .admin import OutboxStats
    from .settings import Settings
    from .store.database import Database

OK, DEGRADED, UNHEALTHY = "ok", "degraded", "unhealthy"
CHECK_TIMEOUT = 5.0


@dataclass(frozen=True)
class Check:
    name: str
    status: str
    detail: str


@dataclass(frozen=True)
class HealthReport:
    checks: list[Check]

    @property
    def status(self) -> str:
        statuses = {c.status for c in self.checks}
        return UNHEALTHY if UNHEALTHY in statuses else DEGRADED if DEGRADED in statuses else OK

    @property
    def healthy(self) -> bool:
        return self.status != UNHEALTHY

    def as_dict(self) -> dict[str, Any]:
        return {"status": self.status, "checks": [asdict(c) for c in self.checks]}


class Heartbeat:
    """A file a relay touches after every loop; its age is how long ago the loop last ran.

    A relay that stops cleanly removes it (no relay on this host is not a failure). A loop
    that dies leaves it behind, stale at once and holding the cause, so ``health --live``
    fails: removing it would make a dead relay look like no relay at all.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._beating = False

    def beat(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self._beating:
            self.path.touch()
        else:  # a new loop: forget how an earlier one ended
            self.path.write_text("")
            self._beating = True

    def clear(self) -> None:
        """The relay stopped cleanly: this host runs no relay now, which is not a failure."""
        self._beating = False
        self.path.unlink(missing_ok=True)

    def dead(self, cause: str) -> None:
        """The relay loop died of ``cause``: leave a heartbeat that is already stale."""
        self._beating = False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(cause)
        os.utime(self.path, (0, 0))

    def age(self) -> float | None:
        """Seconds since the last beat, or None when no relay ever ran on this host."""
        try:
            return max(0.0, time.time() - self.path.stat().st_mtime)
        except FileNotFoundError:
            return None

    def cause(self) -> str:
        """Why the last loop died, if it did ("" otherwise)."""
        try:
            return self.path.read_text().strip()
        except FileNotFoundError:
            return ""


class Health:
    """``reliable.health``: the checks behind ``celery reliable health``."""

    def __init__(
        self,
        app_name: str | None,
        settings: Settings,
        database: Database,
        *,
        broker: Callable[[], Connection],
        outbox_stats: Callable[[], OutboxStats],
        dead_letter_depth: Callable[[], int],
    ) -> None:
        """``broker`` opens a connection for writing; the two queries run at each readiness probe.

        The app name and the table prefix name the heartbeat file, so two apps (or two stores
        of one app) on a host keep separate ones.
        """
        self.settings = settings
        self.database = database
        self._connect = broker
        self._outbox_stats = outbox_stats
        self._dead_letter_depth = dead_letter_depth
        directory = Path(settings.health_directory or tempfile.gettempdir())
        name = f"celery-reliable-{app_name}-{settings.table_prefix}relay.heartbeat"
        self.relay_heartbeat = Heartbeat(directory / name.replace(os.sep, "_"))

    def liveness(self) -> HealthReport:
        return HealthReport([self._timed("relay_loop", self._relay_loop)])

    def readiness(self) -> HealthReport:
        checks = [
            ("store", self._store),
            ("broker", self._broker),
            ("outbox", self._outbox),
            ("relay_loop", self._relay_loop),
            ("dead_letters", self._dead_letters),
        ]
        return HealthReport([self._timed(name, check) for name, check in checks])

    def _timed(self, name: str, check: Callable[[], tuple[str, str]]) -> Check:
        pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
        future = pool.submit(check)
        try:
            status, detail = future.result(timeout=CHECK_TIMEOUT)
        except concurrent.futures.TimeoutError:
            status, detail = UNHEALTHY, f"no answer within {CHECK_TIMEOUT:g}s"
        except Exception as exc:
            status, detail = UNHEALTHY, f"{type(exc).__name__}: {exc}"
        finally:
            pool.shutdown(wait=False)  # a hung check must not hang the probe
        return Check(name, status, detail)

    def _store(self) -> tuple[str, str]:
        with self.database.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return OK, self.database.url.render_as_string(hide_password=True)

    def _broker(self) -> tuple[str, str]:
        with self._connect() as conn:
            conn.ensure_connection(max_retries=1, timeout=CHECK_TIMEOUT)
            return OK, conn.as_uri()

    def _outbox(self) -> tuple[str, str]:
        age = self._outbox_stats().oldest_due_age
        limit = self.settings.unhealthy_after
        if age is not None and age > limit:
            waited, most = readable(age), readable(limit)
            return UNHEALTHY, f"a due message has waited {waited} (more than {most}): no relay?"
        return OK, "draining" if age is not None else "nothing due"

    def _relay_loop(self) -> tuple[str, str]:
        seconds = self.relay_heartbeat.age()
        limit = self.settings.unhealthy_after
        if seconds is None:
            return OK, "no relay runs on this host"
        age = timedelta(seconds=seconds)
        if age > limit:
            cause = self.relay_heartbeat.cause()
            if cause:
                return UNHEALTHY, f"relay loop died: {cause}"
            return UNHEALTHY, f"relay loop last ran {readable(age)} ago (limit {readable(limit)})"
        return OK, f"relay loop ran {readable(age)} ago"

    def _dead_letters(self) -> tuple[str, str]:
        waiting = self._dead_letter_depth()
        limit = self.settings.dead_letter_degraded_depth
        if waiting > limit:
            return DEGRADED, f"dead letters awaiting review: {waiting} (more than {limit})"
        return OK, f"dead letters awaiting review: {waiting}"
