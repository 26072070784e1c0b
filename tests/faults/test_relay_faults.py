"""The relay under faults: its LISTEN connection killed, its lock store down, its loop dead.

A relay is a long-running loop; each dependency it talks to goes away now and then. None of
that may stop it for good: it logs the cause, retries with backoff, and relays again when
the dependency is back. Only a loop that really ended fails ``health --live``: a clean
stop is not a failure, a death is, even though the loop can no longer say so itself.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session

from celery_reliable import Reliable
from celery_reliable.health import OK, UNHEALTHY
from celery_reliable.testing import FaultyLink, wait_for
from tests.acceptance.conftest import Stack, _declared_elsewhere, celery
from tests.acceptance.test_relay import relay_command
from tests.support import ROOT, database_url, make_app, require


@pytest.fixture(params=["redis", "rabbitmq"])
def stack(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stack]:
    s = Stack(require(request.param), database_url("postgresql", tmp_path), tmp_path)
    yield s
    s.close()


def enqueue(stack: Stack, count: int, start: int) -> None:
    with Session(stack.reliable.database.engine) as session, session.begin():
        for n in range(start, start + count):
            signature = stack.producer.signature("effect", (None,))
            stack.reliable.outbox.enqueue(session, signature, message_id=f"r-{n}")


def reach_the_broker(stack: Stack, total: int) -> None:
    """Wait until ``total`` rows are confirmed sent and queued on the broker."""
    wait_for(lambda: stack.outbox_count("sent") == total, 30, what=f"{total} rows sent")
    wait_for(lambda: stack.queue_depth() == total, 30, what=f"{total} messages queued")


def listening_backend(stack: Stack) -> int | None:
    """The pid of the PostgreSQL backend LISTENing for this store's outbox, if any."""
    engine = stack.reliable.database.engine
    with engine.connect() as conn:
        return conn.scalar(
            text("SELECT pid FROM pg_stat_activity WHERE query = :q"),
            {"q": f'LISTEN "{stack.prefix}outbox"'},
        )


def terminate(stack: Stack, pid: int) -> None:
    with stack.reliable.database.engine.connect() as conn:
        assert conn.scalar(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})


def kill_listen_and_keep_relaying(
    stack: Stack, arrived: Callable[[Stack, int], None] = reach_the_broker
) -> None:
    """The scenario, whichever relay runs: LISTEN is cut, the rows after it still go out."""
    enqueue(stack, 5, start=0)
    arrived(stack, 5)
    first = wait_for(lambda: listening_backend(stack), 30, what="the relay to LISTEN")
    terminate(stack, first)
    enqueue(stack, 5, start=5)
    arrived(stack, 10)
    again = wait_for(lambda: listening_backend(stack), 30, what="the relay to LISTEN again")
    assert again != first
    enqueue(stack, 5, start=10)  # published on the new connection's notification
    arrived(stack, 15)


def applied(stack: Stack, total: int) -> None:
    """Wait until a worker has applied ``total`` effects (each message once)."""
    wait_for(lambda: stack.effect_count() >= total, 60, what=f"{total} effects")
    assert stack.effect_count() == total


@pytest.fixture
def relay_thread(stack: Stack) -> Iterator[tuple[Reliable, threading.Thread]]:
    """The producer's relay running in a thread, as `reliable_relay_in_worker` runs it."""
    stop = threading.Event()
    thread = threading.Thread(target=stack.reliable.relay.run, args=(stop,), daemon=True)
    thread.start()
    yield stack.reliable, thread
    stop.set()
    thread.join(30)


def test_a_relay_thread_survives_its_listen_connection_being_killed(stack, relay_thread, caplog):
    caplog.set_level(logging.INFO, logger="celery_reliable")
    _, thread = relay_thread
    kill_listen_and_keep_relaying(stack)
    assert thread.is_alive()
    lost = [r for r in caplog.records if r.levelno == logging.WARNING and "LISTEN" in r.message]
    assert lost, caplog.text
    assert "OperationalError" in lost[0].message  # the cause, as the driver gave it
    assert any(r.levelno == logging.INFO and "LISTEN" in r.message for r in caplog.records)


def test_a_relay_process_survives_its_listen_connection_being_killed(stack):
    command, env = relay_command(stack)
    relay = subprocess.Popen(
        command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        kill_listen_and_keep_relaying(stack)
        assert relay.poll() is None
    finally:
        relay.send_signal(signal.SIGTERM)
        _, err = relay.communicate(timeout=60)
    assert relay.returncode == 0, err
    assert "LISTEN" in err
    assert "OperationalError" in err  # logged with its cause


def test_a_workers_relay_thread_survives_its_listen_connection_being_killed(stack):
    with stack.worker("-P", "threads", RT_RELAY_IN_WORKER="1") as worker:
        kill_listen_and_keep_relaying(stack, applied)
        assert worker.alive
    log = worker.output()
    assert "relay LISTEN connection failed (OperationalError" in log
    assert "relay LISTEN connection works again" in log


def test_a_single_relay_waits_out_its_lock_store_and_then_relays(stack, fault_proxy, caplog):
    """`reliable_relay_single` with the Redis lock down: no lock, no publishing, no death."""
    caplog.set_level(logging.WARNING, logger="celery_reliable")
    link: FaultyLink = fault_proxy(require("redis"))
    link.cut()
    single = make_app(
        stack.broker,
        stack.db,
        stack.prefix,
        backend="disabled://",
        reliable_relay_single=True,
        reliable_redis_url=link.url,
    )
    single.task(name="effect", shared=False)(_declared_elsewhere)
    relay = Reliable.of(single).relay
    stop = threading.Event()
    thread = threading.Thread(target=relay.run, args=(stop,), daemon=True)
    thread.start()
    try:
        enqueue(stack, 5, start=0)
        wait_for(
            lambda: len([r for r in caplog.records if "relay cycle failed" in r.message]) >= 2,
            30,
            what="two cycles failing on the lock store",
        )
        assert thread.is_alive()
        assert stack.outbox_count("sent") == 0  # without the lock, it does not publish
        link.restore()
        reach_the_broker(stack, 5)
        assert thread.is_alive()
    finally:
        stop.set()
        thread.join(30)
        Reliable.of(single).database.dispose()


@pytest.fixture
def redis_stack(tmp_path: Path) -> Iterator[Stack]:
    s = Stack(require("redis"), database_url("postgresql", tmp_path), tmp_path)
    yield s
    s.close()


def live(stack: Stack) -> subprocess.CompletedProcess[str]:
    """`celery reliable health --live` on this host, as a Kubernetes probe runs it."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), **stack.env}
    return celery(env, "reliable", "health", "--live", "--json")


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # on purpose
def test_a_dead_relay_loop_fails_liveness_and_a_stopped_one_does_not(redis_stack, caplog):
    stack = redis_stack
    relay = stack.reliable.relay
    health = stack.reliable.health
    calls = 0
    run_batch = relay.run_batch

    def dies_on_the_third_batch() -> int:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise SystemExit("a library called sys.exit()")  # ends a thread without a trace
        return run_batch()

    relay.run_batch = dies_on_the_third_batch  # type: ignore[method-assign]
    stop = threading.Event()
    thread = threading.Thread(target=relay.run, args=(stop,), daemon=True)
    thread.start()
    thread.join(30)
    assert not thread.is_alive()
    check = health.liveness().checks[0]
    assert (check.status, check.name) == (UNHEALTHY, "relay_loop")
    assert "SystemExit: a library called sys.exit()" in check.detail
    assert any(r.levelno == logging.CRITICAL for r in caplog.records), caplog.text
    probe = live(stack)
    assert probe.returncode == 1, probe.stdout + probe.stderr
    assert "SystemExit" in probe.stdout

    relay.run_batch = run_batch  # type: ignore[method-assign]
    stop = threading.Event()
    thread = threading.Thread(target=relay.run, args=(stop,), daemon=True)
    thread.start()
    wait_for(lambda: health.liveness().checks[0].detail.startswith("relay loop ran"), 30)
    assert health.liveness().healthy  # a new loop beats again: the old death is forgotten
    stop.set()
    thread.join(30)
    check = health.liveness().checks[0]
    assert (check.status, check.detail) == (OK, "no relay runs on this host")
    probe = live(stack)
    assert probe.returncode == 0, probe.stdout + probe.stderr
