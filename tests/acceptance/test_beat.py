"""A real `celery beat` + worker pair runs the maintenance jobs from Reliable(app)'s entries."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import insert, select

from celery_reliable.clock import utcnow
from celery_reliable.store.base import Status
from celery_reliable.testing import wait_for
from tests.support import celery_process

from .conftest import _declared_elsewhere

APP = "tests.acceptance.lifecycle_app"


def test_beat_runs_cleanup_and_stuck_recovery(postgres_stack):
    stack = postgres_stack
    stack.producer.task(name="gateway", shared=False)(_declared_elsewhere)
    reliable = stack.reliable
    old = utcnow() - timedelta(hours=1)
    row = reliable.outbox.build_row(
        stack.producer.signature("gateway", (0,)), None, None, None, None, {}
    )
    row.update(status="sent", sent_at=old, created_at=old, available_at=old)
    with reliable.database.engine.begin() as conn:
        conn.execute(insert(reliable.tables.outbox).values(row))
    reliable.inbox.claim("crashed-run", "gateway", task_name="gateway", owner="dead-worker:1")
    env = {**stack.env, "RT_MAINTENANCE": "1"}
    beat = celery_process(
        ["-A", APP, "beat", "--loglevel=INFO", f"--schedule={stack.dir / 'beat-schedule'}"],
        env,
        stack.dir / "beat.log",
    )
    try:
        with stack.worker(app=APP, RT_MAINTENANCE="1"):

            def maintained() -> bool:
                with reliable.database.engine.connect() as conn:
                    outbox_left = conn.execute(select(reliable.tables.outbox.c.id)).all()
                status = reliable.store.get_status("crashed-run", "gateway")
                return not outbox_left and status is not None and status.status is Status.FAILED

            wait_for(maintained, 60, interval=0.2, what="beat's cleanup and recovery")
    finally:
        beat.stop()
    assert "celery_reliable.cleanup" in beat.output()
    assert "celery_reliable.recover_stuck" in beat.output()
