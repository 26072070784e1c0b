"""Shutdown of real workers: a run interrupted by a cold shutdown costs no attempt."""

from __future__ import annotations

import os
import signal

from celery_reliable.store.base import Status
from celery_reliable.testing import wait_for


def test_a_cold_shutdown_hands_back_the_claim_uncounted_and_the_message_runs_once(
    postgres_stack,
):
    stack = postgres_stack
    (stack.dir / "hold").touch()
    with stack.worker() as first:
        message_id = stack.send("effect", "before_commit")
        wait_for(lambda: (stack.dir / "reached-before_commit").exists(), 60, what="the run")
        os.kill(first.proc.pid, signal.SIGQUIT)  # Celery's cold shutdown: running tasks die
        first.proc.wait(timeout=60)
    assert "interrupted by shutdown: not counted" in first.output()
    row = stack.status(message_id, "effect")
    assert (row.status, row.attempts) == (Status.FAILED, 0)
    (stack.dir / "hold").unlink()

    with stack.worker():
        wait_for(
            lambda: (r := stack.status(message_id, "effect")) and r.status is Status.COMPLETED,
            60,
            what="the redelivered message to complete",
        )
    assert stack.status(message_id, "effect").attempts == 1  # the interrupted run is not counted
    assert stack.effect_count() == 1
    assert stack.count("runs") == 2


def test_a_warm_shutdown_under_load_loses_nothing(postgres_stack):
    """SIGTERM while 300 messages flow: the worker finishes what it runs; the rest waits."""
    stack = postgres_stack
    total = 300
    with stack.worker("-c", "2") as first:
        ids = [stack.send("effect", None) for _ in range(total)]
        wait_for(lambda: stack.effect_count() >= 30, 60, what="the flow to start")
        first.stop()  # SIGTERM: warm shutdown, under load
    done_before = stack.effect_count()
    assert done_before < total, "the worker finished everything before it was stopped"
    with stack.worker():
        wait_for(lambda: stack.effect_count() >= total, 120, what=f"{total} effects")
    assert stack.effect_count() == total
    completed = [stack.status(m, "effect") for m in ids]
    assert all(row is not None and row.status is Status.COMPLETED for row in completed)
    assert stack.reliable.dead_letters.count() == 0
