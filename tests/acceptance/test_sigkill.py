"""SIGKILL real workers mid-task: every message's effect happens exactly once afterwards."""

from __future__ import annotations

import pytest

from celery_reliable.store.base import Status
from celery_reliable.testing import wait_for

#: A short lease: the broker's redelivery of a killed run takes its claim over once the
#: lease is no longer renewed (2.5 s here), not after the default 25 s.
STUCK = "3s"


@pytest.mark.parametrize("kill_point", ["before_commit", "after_block", "after_commit"])
def test_killing_the_whole_worker_mid_task_leaves_exactly_one_effect(stack, kill_point):
    (stack.dir / "hold").touch()
    with stack.worker(RT_STUCK=STUCK) as first:
        message_id = stack.send("effect", kill_point)
        wait_for(lambda: (stack.dir / f"reached-{kill_point}").exists(), 60, what=kill_point)
        first.kill()  # main process and pool child at once, like a lost host
    (stack.dir / "hold").unlink()

    with stack.worker(RT_STUCK=STUCK) as second:
        if kill_point != "after_commit":
            # Nothing was committed (the commit waits for the body to return); the
            # redelivery takes the crashed claim over and runs.
            wait_for(
                lambda: (
                    (row := stack.status(message_id, "effect")) and row.status is Status.COMPLETED
                ),
                60,
                what="the redelivered message to complete",
            )
            expected_runs, expected_attempts = 2, 2
        else:
            # Committed but never acknowledged: the redelivery is recognised and skipped.
            wait_for(lambda: "already processed" in second.output(), 60, what="duplicate skip")
            expected_runs, expected_attempts = 1, 1
    assert stack.effect_count() == 1
    assert stack.count("runs") == expected_runs
    row = stack.status(message_id, "effect")
    assert row.attempts == expected_attempts
    assert stack.reliable.inbox.decode_result(row.result) == kill_point  # stored with the mark


def test_a_pool_process_killed_once_is_processed_exactly_once(stack):
    with stack.worker(RT_STUCK=STUCK):
        message_id = stack.send("kill_own_process", 1)
        wait_for(
            lambda: (
                (row := stack.status(message_id, "kill_own_process"))
                and row.status is Status.COMPLETED
            ),
            60,
            what="the message to complete after the crash",
        )
    assert stack.count("runs") == 2
    assert stack.effect_count() == 1
    assert stack.status(message_id, "kill_own_process").attempts == 2


def test_a_message_that_keeps_killing_its_worker_is_quarantined(stack):
    with stack.worker(RT_MAX_ATTEMPTS="2", RT_STUCK=STUCK) as worker:
        poison = stack.send("kill_own_process", 1000)
        wait_for(
            lambda: (
                (row := stack.status(poison, "kill_own_process")) and row.status is Status.POISONED
            ),
            60,
            what="the message to be quarantined",
        )
        assert stack.count("runs") == 2  # the third delivery did not run the body
        # The worker is still up and still does its work.
        healthy = stack.send("effect", None)
        wait_for(
            lambda: (row := stack.status(healthy, "effect")) and row.status is Status.COMPLETED,
            60,
            what="the next message to complete",
        )
        assert worker.proc.poll() is None
    assert stack.effect_count() == 1
