"""Health checks against real stores and brokers: what makes a probe pass, warn or fail."""

from __future__ import annotations

import os
import re
import time
from datetime import timedelta

import pytest
from sqlalchemy import insert

from celery_reliable import Reliable
from celery_reliable.clock import utcnow
from celery_reliable.dead_letters import FailedMessage
from celery_reliable.health import DEGRADED, OK, UNHEALTHY
from tests.support import make_app


@pytest.fixture
def reliable(db_url, table_prefix, broker_url, tmp_path):
    app = make_app(
        broker_url,
        db_url,
        table_prefix,
        reliable_dead_letter_degraded_depth=1,
        reliable_health_directory=str(tmp_path),
        reliable_unhealthy_after="1m",
        broker_connection_timeout=2,
    )
    reliable = Reliable.of(app)
    reliable.create_schema()

    @app.task(name="shop.ship", shared=False)
    def ship(order):
        return order

    yield reliable
    reliable.database.dispose()


def statuses(report):
    return {c.name: c.status for c in report.checks}


def details(report):
    return {c.name: c.detail for c in report.checks}


def test_a_working_host_is_ready_and_live(reliable):
    ready = reliable.health.readiness()
    assert statuses(ready) == dict.fromkeys(
        ("store", "broker", "outbox", "relay_loop", "dead_letters"), OK
    )
    assert ready.healthy
    assert reliable.health.liveness().healthy


def test_a_stale_relay_loop_fails_both_probes_and_a_fresh_one_passes(reliable):
    heartbeat = reliable.health.relay_heartbeat
    heartbeat.beat()
    assert statuses(reliable.health.liveness()) == {"relay_loop": OK}
    stale = time.time() - 120
    os.utime(heartbeat.path, (stale, stale))
    assert not reliable.health.liveness().healthy
    assert statuses(reliable.health.readiness())["relay_loop"] == UNHEALTHY
    # As an operator reads it: "2 min ago (limit 1 min)", not "120s" or "0:02:00".
    assert re.fullmatch(
        r"relay loop last ran 2 min( \d+ s)? ago \(limit 1 min\)",
        details(reliable.health.liveness())["relay_loop"],
    )


def test_an_outbox_that_does_not_drain_is_not_ready(reliable):
    signature = reliable.app.tasks["shop.ship"].s(1)
    row = reliable.outbox.build_row(signature, None, None, None, None, {})
    row["available_at"] = utcnow() - timedelta(minutes=5)
    with reliable.database.engine.begin() as conn:
        conn.execute(insert(reliable.tables.outbox).values(row))
    report = reliable.health.readiness()
    assert statuses(report)["outbox"] == UNHEALTHY
    assert not report.healthy
    assert re.fullmatch(
        r"a due message has waited 5 min( \d+ s)? \(more than 1 min\): no relay\?",
        details(report)["outbox"],
    )


def test_dead_letters_over_the_depth_degrade_but_stay_healthy(reliable):
    for n in range(2):
        message = FailedMessage(message_id=f"m-{n}", task_id=None, task_name="shop.ship")
        reliable.dead_letters.add(message, "PoisonMessage", detail="x")
    report = reliable.health.readiness()
    assert statuses(report)["dead_letters"] == DEGRADED
    assert (report.status, report.healthy) == (DEGRADED, True)
    assert details(report)["dead_letters"] == "dead letters awaiting review: 2 (more than 1)"
