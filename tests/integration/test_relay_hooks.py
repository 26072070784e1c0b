"""The relay's hooks: the health heartbeat, and single-relay mode under a lock."""

from __future__ import annotations

import threading

from sqlalchemy import func, select

from celery_reliable import Reliable
from celery_reliable.testing import wait_for
from tests.support import make_app


def app_for(db_url, prefix, tmp_path, **conf):
    app = make_app(
        "memory://",
        db_url,
        prefix,
        reliable_health_directory=str(tmp_path),
        reliable_lock_directory=str(tmp_path / "locks"),
        reliable_lock_provider="file",
        reliable_relay_idle_interval=0.05,
        **conf,
    )
    app.task(name="shop.ship", shared=False)(_ship)
    return app


def _ship(order: int) -> int:
    return order


def sent(reliable) -> int:
    t = reliable.tables.outbox
    with reliable.database.engine.connect() as conn:
        return int(conn.scalar(select(func.count()).where(t.c.status == "sent")))


def enqueue(reliable, app, n: int) -> None:
    with reliable.database.engine.begin() as conn:
        for i in range(n):
            reliable.outbox.enqueue(conn, app.tasks["shop.ship"].s(i))


def test_a_running_relay_beats_and_a_stopped_one_clears_its_heartbeat(
    db_url, table_prefix, tmp_path
):
    app = app_for(db_url, table_prefix, tmp_path)
    reliable = Reliable.of(app)
    reliable.create_schema()
    heartbeat = reliable.health.relay_heartbeat
    stop = threading.Event()
    runner = threading.Thread(target=reliable.relay.run, args=(stop,))
    runner.start()
    try:
        wait_for(lambda: heartbeat.age() is not None, 10, what="the first beat")
        assert reliable.health.liveness().healthy
    finally:
        stop.set()
        runner.join(30)
    assert heartbeat.age() is None  # stopped cleanly: no relay on this host any more
    reliable.database.dispose()


def test_single_relay_mode_publishes_from_one_relay_and_fails_over(db_url, table_prefix, tmp_path):
    first_app = app_for(db_url, table_prefix, tmp_path, reliable_relay_single=True)
    second_app = app_for(db_url, table_prefix, tmp_path, reliable_relay_single=True)
    first, second = Reliable.of(first_app), Reliable.of(second_app)
    first.create_schema()
    counted: dict[str, int] = {"first": 0, "second": 0}

    def counting(relay, name):
        inner = relay.hooks.batch

        def batch(claimed, sent_rows, seconds):
            counted[name] += sent_rows
            inner(claimed, sent_rows, seconds)

        relay.hooks.batch = batch

    counting(first.relay, "first")
    counting(second.relay, "second")
    stops = {"first": threading.Event(), "second": threading.Event()}
    threads = {
        "first": threading.Thread(target=first.relay.run, args=(stops["first"],)),
        "second": threading.Thread(target=second.relay.run, args=(stops["second"],)),
    }
    threads["first"].start()
    try:
        # The heartbeat comes before the lock in a cycle: only a published row says that the
        # first relay holds the lock, so the second starts after one.
        enqueue(first, first_app, 1)
        wait_for(lambda: counted["first"] == 1, 30, what="the first relay to take the lock")
        threads["second"].start()
        enqueue(first, first_app, 19)
        wait_for(lambda: sent(first) == 20, 30, what="20 sent")
        # The hook runs just after the rows are marked: wait for it, not for the rows.
        wait_for(lambda: counted["first"] == 20, 10, what="the first relay's batch hooks")
        assert counted == {"first": 20, "second": 0}  # the second stood by
        stops["first"].set()
        threads["first"].join(30)  # releases the lock; the second takes over
        enqueue(first, first_app, 5)
        wait_for(lambda: sent(first) == 25, 30, what="the second relay to take over")
        wait_for(lambda: counted["second"] == 5, 10, what="the second relay's batch hooks")
        assert counted == {"first": 20, "second": 5}
    finally:
        for name in stops:
            stops[name].set()
            if threads[name].ident is not None:  # started
                threads[name].join(30)
        first.database.dispose()
        second.database.dispose()
