"""Holes of issue #13 that the fault matrix does not reach: each test failed on the old code.

An embedded worker on the in-memory broker: what these holes depend on is the store (and,
for the breaker, its Redis), not the broker. A kill between the commit and the broker's
acknowledgement needs a real worker process: that one runs on Redis and PostgreSQL.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from celery.contrib.testing.worker import start_worker
from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy import Column, MetaData, String, Table, func, select

from celery_reliable import MESSAGE_ID_HEADER, DeadLettered, ReliableTask
from celery_reliable import breakers as breakers_module
from celery_reliable.delivery.outcomes import REPLACED
from celery_reliable.store.base import Status
from celery_reliable.testing import FaultyLink, drop_store, wait_for
from tests.acceptance.conftest import Stack
from tests.support import dead_lettered, make_app, require, unique


@dataclass
class Harness:
    app: Any
    reliable: Any
    effects: Table
    runs: list[str]

    def effect_count(self) -> int:
        with self.reliable.database.engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(self.effects)).scalar_one()

    def worker(self, loglevel: str = "error") -> Any:
        return start_worker(
            self.app,
            pool="threads",
            concurrency=1,
            perform_ping_check=False,
            shutdown_timeout=30,
            loglevel=loglevel,  # WARNING for a test that reads the library's warnings
        )

    def held_connections(self) -> int:
        """Connections of the transactional engine not returned to its pool."""
        return int(self.reliable.database.engine.pool.checkedout())


@pytest.fixture
def harness(db_url: str) -> Iterator[Harness]:
    prefix = unique()
    app = make_app("memory://", db_url, prefix, reliable_max_attempts=10)
    reliable = app._celery_reliable
    reliable.create_schema()
    effects = Table(f"{prefix}effects", MetaData(), Column("message_id", String(255)))
    effects.create(reliable.database.engine)
    yield Harness(app, reliable, effects, [])
    reliable.database.dispose()
    drop_store(db_url, prefix)


def _escaped(text: str) -> str:
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


class _EscapeSurrogates(logging.Filter):
    """Escape lone surrogates in a record: pytest-xdist cannot send a report whose
    captured log holds one (its worker crashes), and the body's exception is logged."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = _escaped(record.getMessage()), ()
        if record.exc_info and not record.exc_text:
            record.exc_text = _escaped(logging.Formatter().formatException(record.exc_info))
        return True


@contextmanager
def _logged(level: int) -> Iterator[list[str]]:
    """The messages ``celery_reliable`` logs at ``level`` or above while the block runs."""
    logged: list[str] = []
    handler = logging.Handler(level)
    handler.emit = lambda record: logged.append(record.getMessage())  # type: ignore[method-assign]
    package = logging.getLogger("celery_reliable")
    former = package.level
    package.addHandler(handler)
    package.setLevel(min(level, package.getEffectiveLevel()))
    try:
        yield logged
    finally:
        package.removeHandler(handler)
        package.setLevel(former)


@pytest.fixture
def surrogates_escaped() -> Iterator[None]:
    escape, handlers = _EscapeSurrogates(), list(logging.getLogger().handlers)
    for handler in handlers:
        handler.addFilter(escape)
    yield
    for handler in handlers:
        handler.removeFilter(escape)


@pytest.mark.usefixtures("surrogates_escaped")
def test_an_exception_with_a_nul_byte_and_a_lone_surrogate_is_dead_lettered_once(harness):
    # Old code: PostgreSQL refused the NUL byte with a DataError, which was taken as "store
    # unavailable": the message was deferred and run again, 10 times, and finally stored as
    # max-attempts with its real exception lost. MariaDB and SQLite refused the surrogate alike.
    h = harness

    @h.app.task(
        base=ReliableTask,
        bind=True,
        name="unstorable",
        shared=False,
        poison_exceptions=(ValueError,),
    )
    def unstorable(self):
        h.runs.append(self.message_id)
        raise ValueError("bad byte \x00 and half a pair \ud800 in the message")

    with h.worker():
        caught = dead_lettered(unstorable.apply_async(headers={MESSAGE_ID_HEADER: "nul-1"}))
    assert h.runs == ["nul-1"]
    (entry,) = h.reliable.dead_letters.list()
    assert entry.id == caught.entry_id
    assert entry.exception_type == "ValueError"
    assert entry.detector != "max-attempts"
    assert "bad byte" in (entry.exception_message or "")
    assert h.reliable.store.get_status("nul-1", "unstorable").status is Status.POISONED


def test_a_commit_inside_self_transaction_is_refused_and_dead_lettered(harness):
    # Old code: session.commit() committed the effect without the completion mark; the
    # completion then failed, the run was retried, and each retry committed the effect
    # again (4 effects from one message).
    h = harness

    @h.app.task(base=ReliableTask, bind=True, name="commits", shared=False)
    def commits(self):
        h.runs.append(self.message_id)
        with self.transaction() as session:
            session.execute(h.effects.insert().values(message_id=self.message_id))
            session.commit()

    with h.worker():
        result = commits.apply_async(headers={MESSAGE_ID_HEADER: "commit-1"})
        caught = dead_lettered(result)
    assert isinstance(caught, DeadLettered)
    assert h.runs == ["commit-1"]
    assert h.effect_count() == 0  # refused before anything was committed
    (entry,) = h.reliable.dead_letters.list()
    assert entry.detector == "transaction-misuse"
    assert entry.exception_type == "celery_reliable.exceptions.TransactionMisuse"


def test_messages_of_a_breaker_task_run_when_the_breakers_redis_is_gone():
    # Old code: breakers.admit() raised the Redis ConnectionError out of the pipeline:
    # every message of a breaker task ended FAILURE(ConnectionError), acknowledged, never
    # claimed (lost).
    url, prefix = require("postgresql"), unique()
    link = FaultyLink.to(require("redis"))
    app = make_app("memory://", url, prefix, reliable_redis_url=link.url)
    reliable = app._celery_reliable
    reliable.create_schema()
    reliable.breakers.configure("payments", failure_threshold=2)
    runs: list[str] = []

    @app.task(base=ReliableTask, bind=True, name="pay", shared=False, circuit_breaker="payments")
    def pay(self, n):
        runs.append(self.message_id)
        return n

    link.close()  # the proxy is stopped: nothing answers on its port any more
    try:
        with (
            _logged(logging.WARNING) as logged,
            start_worker(
                app, pool="threads", concurrency=1, perform_ping_check=False, loglevel="WARNING"
            ),
        ):
            results = [
                pay.apply_async((n,), headers={MESSAGE_ID_HEADER: f"pay-{n}"}) for n in range(5)
            ]
            assert [r.get(timeout=30, interval=0.02) for r in results] == list(range(5))
    finally:
        reliable.database.dispose()
        drop_store(url, prefix)
    assert sorted(runs) == [f"pay-{n}" for n in range(5)]
    assert all(r.state == "SUCCESS" for r in results)
    assert any("circuit breaker storage unreachable" in m for m in logged), logged


class GatewayDown(Exception):
    """The service a breaker guards, failing."""


def test_a_breaker_whose_redis_goes_down_opens_locally_then_shares_again(monkeypatch):
    # Old code: pybreaker's CircuitRedisStorage swallows a RedisError once the breaker exists
    # (it logs it and answers "closed", no failures), so with Redis gone after start-up no
    # breaker counted or opened: every message ran against the failing service.
    monkeypatch.setattr(breakers_module, "_SHARED_RETRY_AFTER", 0.3)  # the cool-down, short
    url, prefix = require("postgresql"), unique()
    link = FaultyLink.to(require("redis"))
    app = make_app("memory://", url, prefix, reliable_redis_url=link.url)
    reliable = app._celery_reliable
    reliable.create_schema()
    reliable.breakers.configure("payments", failure_threshold=2, on_open="dead_letter")
    shared = redis.Redis.from_url(require("redis"))
    counter_key = f"celery_reliable:{prefix}payments:pybreaker:fail_counter"
    runs: list[str] = []

    @app.task(
        base=ReliableTask,
        bind=True,
        name="pay",
        shared=False,
        circuit_breaker="payments",
        poison_exceptions=(GatewayDown,),
    )
    def pay(self, fails):
        runs.append(self.message_id)
        if fails:
            raise GatewayDown("payment gateway down")
        return "paid"

    def send(key: str, *, fails: bool) -> Any:
        return pay.apply_async((fails,), headers={MESSAGE_ID_HEADER: key})

    try:
        with (
            _logged(logging.INFO) as logged,
            start_worker(
                app, pool="threads", concurrency=1, perform_ping_check=False, loglevel="WARNING"
            ),
        ):
            assert send("before", fails=False).get(timeout=30, interval=0.02) == "paid"
            assert shared.exists(counter_key)  # the breaker lives in Redis
            link.cut()  # Redis goes away under a breaker that exists
            failed = [dead_lettered(send(f"down-{n}", fails=True)) for n in range(2)]
            held = dead_lettered(send("held", fails=True))
            assert runs == ["before", "down-0", "down-1"]  # "held" never ran
            assert [f.reason for f in failed] == ["PoisonMessage"] * 2
            assert held.reason == "CircuitBreakerOpen"
            link.restore()
            # After the cool-down the shared state is used again. Redis never saw the local
            # failures: closed there, so a run goes ahead, and its failure counts in Redis.
            tries = iter(range(100))
            wait_for(
                lambda: (
                    dead_lettered(send(f"after-{next(tries)}", fails=True)).reason
                    == "PoisonMessage"
                ),
                10,
                what="a run with the shared state",
            )
            assert runs[-1].startswith("after-")
            assert int(shared.get(counter_key) or 0) == 1
            assert any("circuit breaker storage is back" in m for m in logged), logged
    finally:
        reliable.database.dispose()
        drop_store(url, prefix)
        for key in shared.scan_iter(f"celery_reliable:{prefix}*"):
            shared.delete(key)
        link.close()
    unreachable = [m for m in logged if "circuit breaker storage unreachable" in m]
    assert len(unreachable) == 1, logged  # one warning for the outage, not one per message


@pytest.fixture
def redis_postgres(tmp_path: Path) -> Iterator[Stack]:
    stack = Stack(require("redis"), require("postgresql"), tmp_path)
    yield stack
    stack.close()


def test_a_kill_right_after_the_commit_leaves_a_duplicate_that_returns_the_result(
    redis_postgres: Stack,
):
    # Old code: the result was saved after self.transaction()'s commit, in a second
    # statement. A worker killed in between left the completion mark without it, and the
    # redelivered duplicate's .get() returned None instead of the first run's result.
    stack, backend = redis_postgres, require("redis")
    results = Celery("results", backend=backend, set_as_current=False)
    (stack.dir / "hold").touch()
    with stack.worker(RT_BACKEND=backend) as first:
        sent = stack.producer.send_task(
            "effect", ("after_commit",), headers={MESSAGE_ID_HEADER: f"h7-{unique()}"}
        )
        wait_for(lambda: (stack.dir / "reached-after_commit").exists(), 60, what="the commit")
        first.kill()  # committed, never acknowledged: the broker hands the message out again
    (stack.dir / "hold").unlink()
    result = results.AsyncResult(sent.id)
    try:
        with stack.worker(RT_BACKEND=backend) as second:
            assert result.get(timeout=60, interval=0.05) == "after_commit"
            assert "already processed" in second.output()  # the copy was a duplicate
    finally:
        result.forget()
    assert stack.count("runs") == 1
    assert stack.effect_count() == 1


@pytest.mark.parametrize(
    "failure",
    [ConnectionResetError("after the block"), SoftTimeLimitExceeded()],
    ids=["exception", "soft-time-limit"],
)
def test_code_after_the_block_that_raises_commits_nothing_and_the_retry_does_it_once(
    harness, failure
):
    # Old code: the block's commit was the completion mark; code after it that raised left
    # the message done (FAILURE, acknowledged) with whatever the run had not finished.
    h, seen = harness, []

    @h.app.task(base=ReliableTask, bind=True, name="after", shared=False)
    def after(self):
        h.runs.append(self.message_id)
        seen.append(h.effect_count())  # what the earlier runs committed
        with self.transaction() as session:
            session.execute(h.effects.insert().values(message_id=self.message_id))
        if len(h.runs) == 1:
            raise failure
        return "done"

    with h.worker():
        result = after.apply_async(headers={MESSAGE_ID_HEADER: "after-1"})
        assert result.get(timeout=30, interval=0.02) == "done"
    assert h.runs == ["after-1", "after-1"]
    assert seen == [0, 0]  # the first run's write was rolled back with its failure
    assert h.effect_count() == 1
    row = h.reliable.store.get_status("after-1", "after")
    assert (row.status, row.attempts) == (Status.COMPLETED, 2)
    assert h.reliable.inbox.decode_result(row.result) == "done"
    assert h.held_connections() == 0


def test_a_poison_exception_after_the_block_is_dead_lettered_with_nothing_committed(harness):
    h = harness

    @h.app.task(
        base=ReliableTask, bind=True, name="poisoned", shared=False, poison_exceptions=(KeyError,)
    )
    def poisoned(self):
        h.runs.append(self.message_id)
        with self.transaction() as session:
            session.execute(h.effects.insert().values(message_id=self.message_id))
        raise KeyError("after the block")

    with h.worker():
        caught = dead_lettered(poisoned.apply_async(headers={MESSAGE_ID_HEADER: "poison-1"}))
    assert caught.reason == "PoisonMessage"
    assert h.runs == ["poison-1"]
    assert h.effect_count() == 0
    assert h.reliable.store.get_status("poison-1", "poisoned").status is Status.POISONED
    assert h.held_connections() == 0


def test_self_retry_after_the_block_rolls_the_writes_back_and_the_retry_does_them_once(harness):
    # Old code: the writes committed with the mark, then Retry sent a copy that was a
    # duplicate of a "completed" run: the retried work never ran, its .get() returned None.
    h, seen = harness, []

    @h.app.task(base=ReliableTask, bind=True, name="retried", shared=False)
    def retried(self):
        h.runs.append(self.message_id)
        seen.append(h.effect_count())
        with self.transaction() as session:
            session.execute(h.effects.insert().values(message_id=self.message_id))
        if len(h.runs) == 1:
            raise self.retry(countdown=0)
        return "done"

    with h.worker():
        result = retried.apply_async(headers={MESSAGE_ID_HEADER: "retried-1"})
        assert result.get(timeout=30, interval=0.02) == "done"
    assert h.runs == ["retried-1", "retried-1"]
    assert seen == [0, 0]
    assert h.effect_count() == 1
    assert h.reliable.store.get_status("retried-1", "retried").status is Status.COMPLETED
    assert h.held_connections() == 0


def test_replace_after_the_block_commits_the_writes_with_the_replaced_mark(harness):
    # Old code: the block's commit completed the message without a result, so replace()
    # found it done and never stored the REPLACED marker: a duplicate returned None
    # instead of ending as the replaced run did.
    h = harness
    followed: list[int] = []

    @h.app.task(name="follow", shared=False)
    def follow(n):
        followed.append(n)

    @h.app.task(base=ReliableTask, bind=True, name="replacing", shared=False)
    def replacing(self):
        h.runs.append(self.message_id)
        with self.transaction() as session:
            session.execute(h.effects.insert().values(message_id=self.message_id))
        raise self.replace(follow.s(1))

    with h.worker():
        replacing.apply_async(headers={MESSAGE_ID_HEADER: "replace-1"})
        wait_for(lambda: followed == [1], 30, what="the replacement")
    row = h.reliable.store.get_status("replace-1", "replacing")
    assert row.status is Status.COMPLETED
    assert h.reliable.inbox.decode_result(row.result) == REPLACED
    assert h.runs == ["replace-1"]
    assert h.effect_count() == 1
    assert h.held_connections() == 0


class _RefusesJson:
    """A result whose own encoder fails with something else than TypeError/ValueError."""

    def __json__(self) -> Any:
        raise RuntimeError("cannot encode me")


@pytest.mark.parametrize("value", [object(), _RefusesJson()], ids=["not-json", "encoder-fails"])
def test_a_result_that_cannot_be_encoded_is_not_stored_and_the_run_completes(harness, value):
    h, logged = harness, []

    @h.app.task(base=ReliableTask, bind=True, name="odd", shared=False, ignore_result=True)
    def odd(self):
        h.runs.append(self.message_id)
        with self.transaction() as session:
            session.execute(h.effects.insert().values(message_id=self.message_id))
        return value

    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: logged.append(record.getMessage())  # type: ignore[method-assign]
    logging.getLogger("celery_reliable").addHandler(handler)
    try:
        with h.worker(loglevel="WARNING"):
            odd.apply_async(headers={MESSAGE_ID_HEADER: "odd-1"})
            wait_for(
                lambda: (
                    (row := h.reliable.store.get_status("odd-1", "odd"))
                    and row.status is Status.COMPLETED
                ),
                30,
                what="the run to complete",
            )
    finally:
        logging.getLogger("celery_reliable").removeHandler(handler)
    assert h.reliable.store.get_status("odd-1", "odd").result is None
    assert any("not stored" in message for message in logged), logged
    assert h.runs == ["odd-1"]
    assert h.effect_count() == 1
    assert h.reliable.dead_letters.count() == 0
    assert h.held_connections() == 0
