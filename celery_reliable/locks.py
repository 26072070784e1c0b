"""Distributed locks for maintenance jobs: one instance does the work per cycle.

One small interface (:class:`Lock`, from a :class:`LockProvider`) with three providers,
chosen by ``reliable_lock_provider``:

- **redis**: a lease (``SET key token NX PX ttl``) that a daemon thread renews every third
  of its ttl while the work runs. If a renewal fails or finds another token, the lock is
  *lost*: :meth:`Lock.check` raises ``LockLost`` and the job stops between batches. A
  holder that dies stops renewing, and the lease expires after ``ttl``.
- **postgresql**: ``pg_try_advisory_lock`` on a connection held for the lock's life. The
  lock lives exactly as long as that session: a holder that dies, or whose connection is
  cut, releases it, and :meth:`Lock.check` notices the cut (lost).
- **file**: ``flock`` on a file in ``reliable_lock_directory``: one host only; the kernel
  releases it when the holder dies. Never lost.

Acquiring never blocks: a job that finds the lock held skips this cycle. Failures to
acquire and losses are counted through the provider's listeners (metrics).
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import re
import tempfile
import threading
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import text

from .exceptions import ConfigurationError, LockLost

if TYPE_CHECKING:
    from .settings import Settings
    from .store.database import Database

logger = logging.getLogger(__name__)

#: Events a provider reports to its listeners: "acquisition_failure" and "lost".
Listener = Callable[[str, str], None]

_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then
    return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
    return redis.call('del', KEYS[1])
end
return 0
"""


class Lock:
    """A non-blocking lock; ``with provider.lock(name, ttl=...) as held:`` skips when not held."""

    def __init__(self, name: str, provider: LockProvider) -> None:
        self.name = name
        self._provider = provider
        self._held = False
        self._lost = threading.Event()

    @property
    def held(self) -> bool:
        """This process holds the lock (as far as it knows: see :meth:`check`)."""
        return self._held

    @property
    def lost(self) -> bool:
        """The lock was lost while held (lease not renewed, session cut)."""
        return self._lost.is_set()

    def acquire(self) -> bool:
        self._lost.clear()
        self._held = self._acquire()
        if not self._held:
            self._provider.report("acquisition_failure", self.name)
        return self._held

    def release(self) -> None:
        if self._held:
            self._held = False
            self._release()

    def check(self) -> None:
        """Raise LockLost if the lock was lost; jobs call this between batches."""
        if self._held and not self.lost and not self._still_held():
            self._mark_lost()
        if self.lost:
            raise LockLost(f"lock {self.name!r} was lost; the work it guarded stops")

    def _mark_lost(self) -> None:
        if not self._lost.is_set():
            self._lost.set()
            logger.error("lock %s lost while its work ran", self.name)
            self._provider.report("lost", self.name)

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    # -- per provider ---------------------------------------------------------------------

    def _acquire(self) -> bool:
        raise NotImplementedError

    def _release(self) -> None:
        raise NotImplementedError

    def _still_held(self) -> bool:
        return True


class LockProvider(Protocol):
    def lock(self, name: str, *, ttl: timedelta) -> Lock: ...

    def add_listener(self, listener: Listener) -> None: ...

    def report(self, event: str, name: str) -> None: ...


class _Listeners:
    def __init__(self) -> None:
        self._listeners: list[Listener] = []

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def report(self, event: str, name: str) -> None:
        for listener in self._listeners:
            try:
                listener(event, name)
            except Exception:  # a listener never breaks the lock
                logger.warning("lock listener failed", exc_info=True)


# -- Redis ----------------------------------------------------------------------------------


class RedisLocks(_Listeners):
    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = url
        self._client: Any = None
        self._pid = 0

    def client(self) -> Any:
        if self._client is None or self._pid != os.getpid():  # never a parent's socket
            import redis

            self._client = redis.Redis.from_url(self.url)
            self._pid = os.getpid()
        return self._client

    def lock(self, name: str, *, ttl: timedelta) -> Lock:
        return _RedisLock(name, self, ttl)


class _RedisLock(Lock):
    def __init__(self, name: str, provider: RedisLocks, ttl: timedelta) -> None:
        super().__init__(name, provider)
        self._redis = provider
        self.key = f"celery_reliable:lock:{name}"
        self.ttl_ms = max(int(ttl.total_seconds() * 1000), 100)
        self.token = ""
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def _acquire(self) -> bool:
        self.token = uuid.uuid4().hex
        if not self._redis.client().set(self.key, self.token, nx=True, px=self.ttl_ms):
            return False
        self._stop.clear()
        self._renewer = threading.Thread(target=self._renew, name=f"lock {self.name}", daemon=True)
        self._renewer.start()
        return True

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl_ms / 3000):
            try:
                renewed = self._redis.client().eval(_RENEW, 1, self.key, self.token, self.ttl_ms)
            except Exception:
                logger.warning("lock %s: renewal failed", self.name, exc_info=True)
                renewed = 0
            if not renewed:
                self._mark_lost()
                return

    def _release(self) -> None:
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join(timeout=5)
        try:
            self._redis.client().eval(_RELEASE, 1, self.key, self.token)
        except Exception:  # the lease expires by itself
            logger.warning("lock %s: release failed", self.name, exc_info=True)


# -- PostgreSQL -----------------------------------------------------------------------------


def advisory_key(name: str) -> int:
    """A stable signed 64-bit key for ``pg_advisory_lock``: the first 8 bytes of SHA-256."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


class PostgresLocks(_Listeners):
    def __init__(self, database: Database) -> None:
        super().__init__()
        self.database = database

    def lock(self, name: str, *, ttl: timedelta) -> Lock:
        return _PostgresLock(name, self)


class _PostgresLock(Lock):
    def __init__(self, name: str, provider: PostgresLocks) -> None:
        super().__init__(name, provider)
        self._database = provider.database
        self.key = advisory_key(name)
        self._connection: Any = None

    def _acquire(self) -> bool:
        connection = self._database.autocommit.connect()
        try:
            got = connection.scalar(text("SELECT pg_try_advisory_lock(:k)"), {"k": self.key})
        except Exception:
            connection.close()
            raise
        if not got:
            connection.close()
            return False
        self._connection = connection
        return True

    def _still_held(self) -> bool:
        try:
            self._connection.execute(text("SELECT 1"))
            return True
        except Exception:  # the session, and with it the lock, is gone
            return False

    def _release(self) -> None:
        connection, self._connection = self._connection, None
        try:
            connection.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": self.key})
        except Exception:  # a dead session holds nothing
            logger.debug("lock %s: unlock failed", self.name, exc_info=True)
        finally:
            connection.close()


# -- file -----------------------------------------------------------------------------------


class FileLocks(_Listeners):
    def __init__(self, directory: str | None) -> None:
        super().__init__()
        self.directory = Path(directory or Path(tempfile.gettempdir()) / "celery-reliable-locks")

    def lock(self, name: str, *, ttl: timedelta) -> Lock:
        return _FileLock(name, self)


def file_name(name: str) -> str:
    """A lock name as a safe file name (readable, with a hash against collisions)."""
    readable = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:80]
    return f"{readable}-{hashlib.sha256(name.encode()).hexdigest()[:12]}.lock"


class _FileLock(Lock):
    def __init__(self, name: str, provider: FileLocks) -> None:
        super().__init__(name, provider)
        self.path = provider.directory / file_name(name)
        self._fd: int | None = None

    def _acquire(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def _release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


def build_lock_provider(settings: Settings, database: Database) -> LockProvider:
    """The provider ``reliable_lock_provider`` names (``auto``: redis, postgresql, file)."""
    choice = settings.lock_provider
    if choice == "auto":
        if settings.redis_url:
            choice = "redis"
        elif database.dialect == "postgresql":
            choice = "postgresql"
        else:
            choice = "file"
    if choice == "redis":
        if not settings.redis_url:
            raise ConfigurationError(
                "setting 'reliable_lock_provider' is 'redis' but 'reliable_redis_url' is unset"
            )
        return RedisLocks(settings.redis_url)
    if choice == "postgresql":
        if database.dialect != "postgresql":
            raise ConfigurationError(
                "setting 'reliable_lock_provider' is 'postgresql' but the store is "
                f"{database.dialect}"
            )
        return PostgresLocks(database)
    return FileLocks(settings.lock_directory)
