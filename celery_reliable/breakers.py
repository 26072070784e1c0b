"""Circuit breakers, shared by every worker through Redis, with one probe per cluster.

pybreaker keeps the state machine (closed → open → half-open) and, with
``reliable_redis_url``, stores it in Redis (``CircuitRedisStorage``), so a breaker opened
by one worker is open for all. pybreaker's ``call()`` wraps a function, but a task run is
not a function call here: the pipeline must decide *before* claiming the message (an open
breaker spends no attempt) and report *after* the body. So :meth:`Breakers.admit` reads the
state and :meth:`record_success` / :meth:`record_failure` drive pybreaker's own
``open()``, ``half_open()``, ``close()`` and counters.

pybreaker lets every process probe a half-open breaker at once. Here a probe first takes a
lock (``SET NX PX`` in Redis, a timestamp in memory) that expires after ``probe_timeout``:
exactly one run in the cluster probes; the others wait, and a prober that died frees the
lock when it expires.

When Redis cannot be reached, each process falls back to its own breakers (memory state)
for ``_SHARED_RETRY_AFTER`` seconds at a time, then tries Redis again; one warning when the
outage starts, one (INFO) when Redis is back. pybreaker's own Redis storage would hide the outage
(:class:`SharedStorage` says how), so the shared breakers use a storage that does not.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from functools import cache
from typing import Any, TypeVar

import pybreaker

from .durations import parse_seconds
from .exceptions import ConfigurationError

logger = logging.getLogger(__name__)

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half-open"
ON_OPEN = ("delay", "dead_letter")
_MIN_WAIT = 0.5
#: Seconds on the process's own breakers after Redis failed, before trying Redis again: an
#: outage costs one failed call per process per period, not one per message.
_SHARED_RETRY_AFTER = 5.0
#: Seconds a Redis call may take (connect, then answer) before Redis counts as down.
_REDIS_TIMEOUT = 2.0
_T = TypeVar("_T")


@dataclass(frozen=True)
class Admission:
    """Whether a run may go ahead, and if it is the cluster's half-open probe."""

    name: str
    allowed: bool
    probe: bool = False
    retry_after: float = 0.0  # seconds until the breaker may half-open (when not allowed)
    shared: bool = False  # decided on the Redis state; False: on this process's own


class SharedStorage(pybreaker.CircuitRedisStorage):
    """pybreaker's Redis storage, except that a Redis error is raised, not hidden.

    ``CircuitRedisStorage`` catches every ``RedisError`` after the breaker exists, logs it
    and answers with defaults: state "closed", no failures, never opened. A breaker whose
    Redis went away would then count nothing and never open, while the service it guards
    may be failing. Raising lets :class:`Breakers` use the process's own breaker instead.
    Same keys and encoding as pybreaker's, so both read the same state.
    """

    @property
    def state(self) -> str:
        raw = self._redis.get(self._namespace("state"))
        if raw is None:  # deleted (a flushed Redis): closed again, as pybreaker does
            self._initialize_redis_state(self._fallback_circuit_state)
            return self._fallback_circuit_state
        return bytes(raw).decode("utf-8")

    @state.setter
    def state(self, state: str) -> None:
        self._redis.set(self._namespace("state"), str(state))

    def increment_counter(self) -> None:
        self._redis.incr(self._namespace("fail_counter"))

    def reset_counter(self) -> None:
        self._redis.set(self._namespace("fail_counter"), 0)

    def increment_success_counter(self) -> None:
        self._redis.incr(self._namespace("success_counter"))

    def reset_success_counter(self) -> None:
        self._redis.set(self._namespace("success_counter"), 0)

    @property
    def counter(self) -> int:
        return int(self._redis.get(self._namespace("fail_counter")) or 0)

    @property
    def success_counter(self) -> int:
        return int(self._redis.get(self._namespace("success_counter")) or 0)

    @property
    def opened_at(self) -> datetime | None:
        raw = self._redis.get(self._namespace("opened_at"))
        return datetime.fromtimestamp(int(raw), timezone.utc) if raw else None

    @opened_at.setter
    def opened_at(self, now: datetime) -> None:
        """Whole seconds, and never earlier than what another worker stored (clock skew)."""
        key, stamp = self._namespace("opened_at"), int(now.timestamp())

        def set_if_later(pipe: Any) -> None:
            current = pipe.get(key)
            pipe.multi()
            if not current or stamp > int(current):
                pipe.set(key, stamp)

        client: Any = self._redis  # redis-py leaves transaction() unannotated
        client.transaction(set_if_later, key)


@dataclass(frozen=True)
class _Config:
    failure_threshold: int
    reset_timeout: float
    exclude: tuple[type[BaseException], ...]
    on_open: str
    probe_timeout: float


class _Transitions(pybreaker.CircuitBreakerListener):
    def __init__(self, breakers: Breakers) -> None:
        self.breakers = breakers

    def state_change(self, cb: Any, old_state: Any, new_state: Any) -> None:
        old = getattr(old_state, "name", str(old_state))
        self.breakers.transition(cb.name, old, new_state.name)


class Breakers:
    """``reliable.breakers``: configure, inspect and reset named circuit breakers."""

    def __init__(self, redis_url: str | None, *, namespace: str) -> None:
        self.redis_url = redis_url
        self.namespace = namespace
        self._configs: dict[str, _Config] = {}
        self._breakers: dict[str, pybreaker.CircuitBreaker] = {}
        self._listeners: list[Callable[[str, str, str], None]] = []
        self._probes: dict[str, float] = {}  # memory mode: probe lock expiry per name
        self._lock = threading.Lock()
        self._redis: Any = None
        self._fallback: Breakers | None = None
        self._local_until = 0.0  # monotonic: Redis failed, use the fallback until then
        self._pid = 0

    # -- configuration ----------------------------------------------------------------------

    def configure(
        self,
        name: str,
        failure_threshold: int = 5,
        reset_timeout: float | timedelta = 60,
        *,
        exclude: Iterable[type[BaseException]] = (),
        on_open: str = "delay",
        probe_timeout: float | timedelta | None = None,
    ) -> None:
        """Define (or redefine) the breaker ``name``; ConfigurationError on bad input."""
        if not isinstance(name, str) or not name.strip():
            raise ConfigurationError(f"a circuit breaker name must be a non-empty string: {name!r}")
        if (
            isinstance(failure_threshold, bool)
            or not isinstance(failure_threshold, int)
            or failure_threshold < 1
        ):
            raise ConfigurationError(
                f"breaker {name!r}: failure_threshold must be a whole number >= 1, "
                f"got {failure_threshold!r}"
            )
        reset = _seconds(reset_timeout, f"breaker {name!r}: reset_timeout")
        probe = reset if probe_timeout is None else _seconds(probe_timeout, "probe_timeout")
        excluded = tuple(exclude)
        if not all(isinstance(e, type) and issubclass(e, BaseException) for e in excluded):
            raise ConfigurationError(f"breaker {name!r}: exclude must be exception classes")
        if on_open not in ON_OPEN:
            raise ConfigurationError(
                f"breaker {name!r}: on_open must be 'delay' or 'dead_letter', got {on_open!r}"
            )
        with self._lock:
            self._configs[name] = _Config(failure_threshold, reset, excluded, on_open, probe)
            self._breakers.pop(name, None)
            if self._fallback is not None:
                self._fallback._breakers.pop(name, None)

    def __contains__(self, name: object) -> bool:
        return name in self._configs

    def on_open(self, name: str) -> str:
        return self._config(name).on_open

    def add_listener(self, listener: Callable[[str, str, str], None]) -> None:
        """Called with (name, old state, new state) on every transition this process makes."""
        self._listeners.append(listener)

    # -- state ------------------------------------------------------------------------------

    def states(self) -> dict[str, str]:
        return {name: self._state(name) for name in sorted(self._configs)}

    def reset(self, name: str) -> None:
        """Close the breaker (for every worker, with Redis) and forget its failures."""
        breaker = self._breaker(name)
        breaker.close()
        self._release_probe(name)

    def admit(self, name: str) -> Admission:
        """May a run protected by ``name`` go ahead now?"""
        return self._shared_or_local(lambda breakers: breakers._admit(name))

    def record_success(self, name: str, admission: Admission) -> None:
        self._shared_or_local(
            lambda breakers: breakers._record_success(name, admission), admission.shared
        )

    def record_failure(self, name: str, exc: BaseException, admission: Admission) -> None:
        self._shared_or_local(
            lambda breakers: breakers._record_failure(name, exc, admission), admission.shared
        )

    def _shared_or_local(self, call: Callable[[Breakers], _T], shared: bool = True) -> _T:
        """``call`` on the shared (Redis) state; on this process's own when Redis fails.

        A breaker protects a downstream service; its storage being down says nothing
        about the messages, so it must never fail one. The process-local breaker counts
        meanwhile (each worker opens on its own failures) and Redis is tried again every
        ``_SHARED_RETRY_AFTER`` seconds. A run is reported to the breaker that admitted it
        (``shared``), so a local probe never releases the cluster's probe lock.
        """
        if self.redis_url is None:
            return call(self)
        if not shared or time.monotonic() < self._local_until:
            return call(self._local())
        try:
            result = call(self)
        except _storage_errors() as exc:
            self._storage_down(exc)
            return call(self._local())
        if self._local_until:
            self._storage_back()
        return result

    def _storage_down(self, exc: BaseException) -> None:
        with self._lock:
            outage_starts = not self._local_until
            self._local_until = time.monotonic() + _SHARED_RETRY_AFTER
        if outage_starts:  # once per outage, not once per message or per retry
            logger.warning(
                "circuit breaker storage unreachable (%s: %s): this process uses its own "
                "breakers, and tries Redis again every %g s",
                type(exc).__name__,
                exc,
                _SHARED_RETRY_AFTER,
            )

    def _storage_back(self) -> None:
        with self._lock:
            outage_ends, self._local_until = bool(self._local_until), 0.0
        if outage_ends:
            logger.info(
                "circuit breaker storage is back: the breakers are shared again "
                "(what this process counted alone is not carried over)"
            )

    def _local(self) -> Breakers:
        """The process-local twin: the same configurations and listeners, memory state."""
        if self._fallback is None:
            local = Breakers(None, namespace=self.namespace)
            local._configs = self._configs
            local._listeners = self._listeners
            self._fallback = local
        return self._fallback

    def _admit(self, name: str) -> Admission:
        config = self._config(name)
        breaker = self._breaker(name)
        state = self._state(name)
        shared = self.redis_url is not None
        if state == CLOSED:
            return Admission(name, allowed=True, shared=shared)
        if state == OPEN:
            remaining = config.reset_timeout - self._open_for(breaker)
            if remaining > 0:
                return Admission(name, False, retry_after=_wait(remaining), shared=shared)
        if self._take_probe(name, config.probe_timeout):
            if state == OPEN:
                breaker.half_open()
            return Admission(name, allowed=True, probe=True, shared=shared)
        wait = _wait(min(config.probe_timeout, 5.0))
        return Admission(name, allowed=False, retry_after=wait, shared=shared)

    def _record_success(self, name: str, admission: Admission) -> None:
        breaker = self._breaker(name)
        if admission.probe:
            breaker.close()
            self._release_probe(name)
        elif breaker.fail_counter:
            breaker._state_storage.reset_counter()

    def _record_failure(self, name: str, exc: BaseException, admission: Admission) -> None:
        config = self._config(name)
        if isinstance(exc, config.exclude):  # not the service's fault: counts as a success
            self._record_success(name, admission)
            return
        breaker = self._breaker(name)
        if admission.probe:
            breaker.open()
            self._release_probe(name)
            return
        breaker._state_storage.increment_counter()
        if breaker.fail_counter >= config.failure_threshold and self._state(name) == CLOSED:
            breaker.open()

    # -- internals ----------------------------------------------------------------------------

    def transition(self, name: str, old: str, new: str) -> None:
        level = logging.WARNING if new == OPEN else logging.INFO
        logger.log(level, "circuit breaker %s: %s -> %s", name, old, new)
        for listener in self._listeners:
            try:
                listener(name, old, new)
            except Exception:
                logger.warning("circuit breaker listener failed", exc_info=True)

    def _config(self, name: str) -> _Config:
        try:
            return self._configs[name]
        except KeyError:
            raise ConfigurationError(
                f"no circuit breaker named {name!r}; configure it with "
                f"reliable.breakers.configure({name!r}, ...)"
            ) from None

    def _client(self) -> Any:
        if self._redis is None or self._pid != os.getpid():  # never a parent's socket
            import redis

            assert self.redis_url is not None
            from redis.backoff import NoBackoff
            from redis.retry import Retry

            # The storage reads bytes: decode_responses must stay off. Short timeouts and
            # one retry: a message waits on an unreachable Redis seconds, not minutes.
            self._redis = redis.Redis.from_url(
                self.redis_url,
                decode_responses=False,
                socket_connect_timeout=_REDIS_TIMEOUT,
                socket_timeout=_REDIS_TIMEOUT,
                retry=Retry(NoBackoff(), 1),
            )
            self._pid = os.getpid()
            self._breakers.clear()
        return self._redis

    def _breaker(self, name: str) -> pybreaker.CircuitBreaker:
        config = self._config(name)
        client = self._client() if self.redis_url else None
        with self._lock:
            breaker = self._breakers.get(name)
            if breaker is None:
                storage: pybreaker.CircuitBreakerStorage
                if client is not None:
                    storage = SharedStorage(
                        CLOSED, client, namespace=f"celery_reliable:{self.namespace}{name}"
                    )
                else:
                    storage = pybreaker.CircuitMemoryStorage(CLOSED)
                breaker = pybreaker.CircuitBreaker(
                    fail_max=config.failure_threshold,
                    reset_timeout=config.reset_timeout,
                    exclude=list(config.exclude),
                    state_storage=storage,
                    listeners=[_Transitions(self)],
                    name=name,
                )
                self._breakers[name] = breaker
            return breaker

    def _state(self, name: str) -> str:
        return str(self._breaker(name).current_state)

    @staticmethod
    def _open_for(breaker: pybreaker.CircuitBreaker) -> float:
        opened_at = breaker._state_storage.opened_at
        if opened_at is None:
            return float("inf")
        if opened_at.tzinfo is None:
            opened_at = opened_at.replace(tzinfo=timezone.utc)
        return (datetime.now(timezone.utc) - opened_at).total_seconds()

    def _probe_key(self, name: str) -> str:
        return f"celery_reliable:{self.namespace}{name}:probe"

    def _take_probe(self, name: str, timeout: float) -> bool:
        if self.redis_url:
            px = max(int(timeout * 1000), 1)
            return bool(self._client().set(self._probe_key(name), os.getpid(), nx=True, px=px))
        with self._lock:
            now = time.monotonic()
            if self._probes.get(name, 0.0) > now:
                return False
            self._probes[name] = now + timeout
            return True

    def _release_probe(self, name: str) -> None:
        if self.redis_url:
            self._client().delete(self._probe_key(name))
        else:
            with self._lock:
                self._probes.pop(name, None)


@cache
def _storage_errors() -> tuple[type[BaseException], ...]:
    """What the shared storage raises when Redis cannot be reached."""
    from redis.exceptions import RedisError

    return (RedisError, OSError)


def _seconds(value: float | timedelta, what: str) -> float:
    try:
        return parse_seconds(value)
    except ValueError as exc:
        raise ConfigurationError(f"{what}: {exc}") from exc


def _wait(seconds: float) -> float:
    """At least half a second, plus up to 10% jitter, so waiting messages spread out."""
    seconds = max(seconds, _MIN_WAIT)
    return seconds + random.uniform(0, seconds * 0.1)
