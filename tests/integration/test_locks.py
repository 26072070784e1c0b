"""Distributed locks against real Redis and PostgreSQL, contended by real processes."""

from __future__ import annotations

import multiprocessing
import os
import signal
from datetime import timedelta
from pathlib import Path

import pytest
import redis
from sqlalchemy import text

from celery_reliable import ConfigurationError
from celery_reliable.exceptions import LockLost
from celery_reliable.locks import (
    FileLocks,
    PostgresLocks,
    RedisLocks,
    advisory_key,
    build_lock_provider,
    file_name,
)
from celery_reliable.settings import Settings
from celery_reliable.store.database import Database
from celery_reliable.testing import wait_for
from tests.support import require, unique

TTL = timedelta(seconds=1)


def provider_for(kind: str, tmp_path: Path):
    if kind == "redis":
        return RedisLocks(require("redis"))
    if kind == "postgresql":
        return PostgresLocks(Database(require("postgresql")))
    return FileLocks(str(tmp_path))


def _contend(kind: str, directory: str, name: str, barrier, results, release) -> None:
    provider = provider_for(kind, Path(directory))
    lock = provider.lock(name, ttl=TTL)
    barrier.wait()
    held = lock.acquire()
    results.put(held)
    if held:
        release.wait(30)
        lock.release()


@pytest.mark.parametrize("kind", ["redis", "postgresql", "file"])
def test_one_of_several_processes_gets_the_lock_then_the_next_can(kind, tmp_path):
    provider_for(kind, tmp_path)  # skips (or fails in CI) when the service is absent
    name = f"app:{unique()}:cleanup"
    context = multiprocessing.get_context("spawn")
    barrier, results, release = context.Barrier(4), context.Queue(), context.Event()
    args = (kind, str(tmp_path), name, barrier, results, release)
    processes = [context.Process(target=_contend, args=args) for _ in range(4)]
    for process in processes:
        process.start()
    outcomes = [results.get(timeout=60) for _ in processes]
    assert sorted(outcomes) == [False, False, False, True]
    release.set()
    for process in processes:
        process.join(timeout=60)
    lock = provider_for(kind, tmp_path).lock(name, ttl=TTL)
    with lock as held:
        assert held  # released by its holder: the next one gets it


def _hold_forever(kind: str, directory: str, name: str, ready) -> None:
    lock = provider_for(kind, Path(directory)).lock(name, ttl=TTL)
    assert lock.acquire()
    ready.set()
    signal.pause()


@pytest.mark.parametrize("kind", ["redis", "postgresql", "file"])
def test_a_killed_holder_releases_the_lock(kind, tmp_path):
    provider = provider_for(kind, tmp_path)
    name = f"app:{unique()}:recover"
    context = multiprocessing.get_context("spawn")
    ready = context.Event()
    holder = context.Process(target=_hold_forever, args=(kind, str(tmp_path), name, ready))
    holder.start()
    assert ready.wait(60)
    assert not provider.lock(name, ttl=TTL).acquire()
    os.kill(holder.pid, signal.SIGKILL)
    holder.join(30)
    # Redis: the lease expires (no one renews it); PostgreSQL and files: at once.
    wait_for(lambda: provider.lock(name, ttl=TTL).acquire(), 10, what="the lock to free up")


def test_a_redis_lease_taken_away_is_lost_and_stops_the_work():
    provider = RedisLocks(require("redis"))
    events = []
    provider.add_listener(lambda event, name: events.append(event))
    lock = provider.lock(f"app:{unique()}:cleanup", ttl=TTL)
    assert lock.acquire()
    lock.check()  # held: nothing happens
    redis.Redis.from_url(require("redis")).set(lock.key, "someone-else")
    wait_for(lambda: lock.lost, 10, what="the renewal to notice")
    with pytest.raises(LockLost):
        lock.check()
    lock.release()  # never deletes the other owner's key
    assert redis.Redis.from_url(require("redis")).get(lock.key) == b"someone-else"
    redis.Redis.from_url(require("redis")).delete(lock.key)
    assert events == ["lost"]


def test_a_postgresql_lock_whose_session_is_killed_is_lost():
    database = Database(require("postgresql"))
    lock = PostgresLocks(database).lock(f"app:{unique()}:cleanup", ttl=TTL)
    assert lock.acquire()
    pid = lock._connection.scalar(text("SELECT pg_backend_pid()"))
    with database.autocommit.connect() as other:
        other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    with pytest.raises(LockLost):
        lock.check()
    lock.release()
    assert PostgresLocks(database).lock(lock.name, ttl=TTL).acquire()
    database.dispose()


def test_names_keys_and_provider_choice(tmp_path):
    assert advisory_key("a") == advisory_key("a") != advisory_key("b")
    assert -(2**63) <= advisory_key("x") < 2**63
    assert file_name("shop:reliable_:cleanup").startswith("shop_reliable__cleanup-")
    assert file_name("a/b") != file_name("a:b")
    sqlite = Database(f"sqlite:///{tmp_path / 's.db'}")
    auto = Settings.from_conf({})
    assert isinstance(build_lock_provider(auto, sqlite), FileLocks)
    with_redis = Settings.from_conf({"reliable_redis_url": "redis://127.0.0.1:6379/1"})
    assert isinstance(build_lock_provider(with_redis, sqlite), RedisLocks)
    with pytest.raises(ConfigurationError, match="reliable_redis_url"):
        build_lock_provider(Settings.from_conf({"reliable_lock_provider": "redis"}), sqlite)
    with pytest.raises(ConfigurationError, match="the store is sqlite"):
        build_lock_provider(Settings.from_conf({"reliable_lock_provider": "postgresql"}), sqlite)
