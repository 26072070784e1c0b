"""The breakers' Redis storage lets an outage through, and Breakers falls back on it (pure
logic: redis-py replaced by a dict with an outage switch; tests/faults covers real Redis)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import pybreaker
import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from celery_reliable import breakers as breakers_module
from celery_reliable.breakers import Breakers, SharedStorage


class FakeRedis:
    """The few redis-py calls the breakers make, on a dict; ``down`` refuses them all."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}
        self.down = False

    def _answer(self) -> None:
        if self.down:
            raise RedisConnectionError("Error 111 connecting to 127.0.0.1:6379.")

    def get(self, key: str) -> bytes | None:
        self._answer()
        return self.data.get(key)

    def set(self, key: str, value: object, nx: bool = False, px: int | None = None) -> bool:
        self._answer()
        if nx and key in self.data:
            return False
        self.data[key] = str(value).encode()
        return True

    def setnx(self, key: str, value: object) -> bool:
        return self.set(key, value, nx=True)

    def incr(self, key: str) -> None:
        self._answer()
        self.data[key] = str(int(self.data.get(key, b"0")) + 1).encode()

    def delete(self, key: str) -> None:
        self._answer()
        self.data.pop(key, None)

    def transaction(self, func: Callable[[Any], None], *keys: str) -> None:
        self._answer()
        func(self)  # the pipe: reads at once (WATCH mode), then queues writes

    def multi(self) -> None:
        pass


STORAGE_MEMBERS = sorted(
    name for name in vars(pybreaker.CircuitBreakerStorage) if not name.startswith("_")
)


def test_every_member_of_the_storage_is_ours_so_none_hides_an_error():
    # A pybreaker release that adds a member to the storage would bring back its own,
    # which swallows RedisError: this fails first.
    assert STORAGE_MEMBERS  # the interface was found
    inherited = [name for name in STORAGE_MEMBERS if name not in vars(SharedStorage)]
    assert inherited == ["name"]  # a constant ("redis"), no Redis call


USES: dict[str, Callable[[SharedStorage], object]] = {
    "state": lambda s: s.state,
    "state=": lambda s: setattr(s, "state", "open"),
    "increment_counter": lambda s: s.increment_counter(),
    "reset_counter": lambda s: s.reset_counter(),
    "increment_success_counter": lambda s: s.increment_success_counter(),
    "reset_success_counter": lambda s: s.reset_success_counter(),
    "counter": lambda s: s.counter,
    "success_counter": lambda s: s.success_counter,
    "opened_at": lambda s: s.opened_at,
    "opened_at=": lambda s: setattr(s, "opened_at", datetime.now(timezone.utc)),
}


def test_the_uses_cover_every_member():
    assert {use.rstrip("=") for use in USES} == set(STORAGE_MEMBERS) - {"name"}


@pytest.mark.parametrize("use", sorted(USES))
def test_a_redis_outage_is_raised_where_pybreaker_answers_defaults(use):
    fake = FakeRedis()
    ours = SharedStorage("closed", fake, namespace="n")  # type: ignore[arg-type]
    theirs = pybreaker.CircuitRedisStorage("closed", fake, namespace="n")  # type: ignore[arg-type]
    fake.down = True
    logging.getLogger("pybreaker").disabled = True  # its traceback per swallowed error
    try:
        USES[use](theirs)  # the hole: no error, a default answer
    finally:
        logging.getLogger("pybreaker").disabled = False
    with pytest.raises(RedisConnectionError):
        USES[use](ours)


def test_it_reads_and_writes_what_pybreakers_storage_does():
    fake = FakeRedis()
    ours = SharedStorage("closed", fake, namespace="n")  # type: ignore[arg-type]
    theirs = pybreaker.CircuitRedisStorage("closed", fake, namespace="n")  # type: ignore[arg-type]
    opened = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    ours.state, ours.opened_at = "open", opened
    ours.increment_counter()
    ours.increment_counter()
    theirs.increment_success_counter()
    assert (theirs.state, theirs.opened_at, theirs.counter) == ("open", opened, 2)
    assert ours.success_counter == 1
    ours.opened_at = datetime(2026, 1, 1, tzinfo=timezone.utc)  # another worker's late clock
    assert ours.opened_at == opened
    del fake.data["n:pybreaker:state"]  # a flushed Redis: closed again
    assert ours.state == "closed"


@pytest.fixture
def on_fake_redis(monkeypatch) -> tuple[Breakers, FakeRedis]:
    monkeypatch.setattr(breakers_module, "_SHARED_RETRY_AFTER", 0.0)  # retry Redis every call
    fake = FakeRedis()
    breakers = Breakers("redis://unused", namespace="t_")
    breakers._redis, breakers._pid = fake, os.getpid()
    breakers.configure("pay", failure_threshold=2, reset_timeout=60)
    return breakers, fake


def fail(breakers: Breakers, times: int) -> None:
    for _ in range(times):
        admission = breakers.admit("pay")
        assert admission.allowed
        breakers.record_failure("pay", OSError("service down"), admission)


def test_during_an_outage_the_local_breaker_opens_and_warns_once(on_fake_redis, caplog):
    breakers, fake = on_fake_redis
    fail(breakers, 1)  # counted in Redis
    fake.down = True
    with caplog.at_level(logging.INFO, logger="celery_reliable.breakers"):
        fail(breakers, 2)  # Redis is tried again on every call, and fails each time
        held = breakers.admit("pay")
    assert not held.allowed
    assert not held.shared
    assert breakers._local().states() == {"pay": "open"}
    warnings = [r for r in caplog.records if "storage unreachable" in r.getMessage()]
    assert len(warnings) == 1
    assert warnings[0].levelno == logging.WARNING


def test_when_redis_answers_again_the_shared_state_is_used(on_fake_redis, caplog):
    breakers, fake = on_fake_redis
    fake.down = True
    fail(breakers, 2)
    fake.down = False
    with caplog.at_level(logging.INFO, logger="celery_reliable.breakers"):
        admission = breakers.admit("pay")  # closed in Redis, which saw none of it
    assert admission.allowed
    assert admission.shared
    assert "circuit breaker storage is back" in caplog.text
    breakers.record_failure("pay", OSError("service down"), admission)
    assert fake.data["celery_reliable:t_pay:pybreaker:fail_counter"] == b"1"


def test_a_run_is_reported_to_the_breaker_that_admitted_it(on_fake_redis):
    breakers, fake = on_fake_redis
    breakers.record_success("pay", breakers.admit("pay"))  # the shared breaker exists
    fake.down = True
    local = breakers.admit("pay")
    fake.down = False
    breakers.record_failure("pay", OSError("service down"), local)
    assert fake.data["celery_reliable:t_pay:pybreaker:fail_counter"] == b"0"  # not Redis's run
    assert breakers._local()._breaker("pay").fail_counter == 1
