"""The edges of a run in real prefork workers: a hard time limit, and a run longer than its lease.

Before the fix, a hard time limit acknowledged the message as FAILURE with its inbox row
left ``processing`` (lost); a run longer than ``reliable_stuck_threshold`` was taken over
by a second copy while alive (its effect twice).
"""

from __future__ import annotations

import pytest

from celery_reliable import MESSAGE_ID_HEADER
from celery_reliable.store.base import Status
from celery_reliable.testing import wait_for


def completed(stack, message_id: str, key: str) -> bool:
    row = stack.status(message_id, key)
    return row is not None and row.status is Status.COMPLETED


def test_a_run_killed_by_its_hard_time_limit_is_redelivered_and_completes(stack):
    with stack.worker(RT_MAX_ATTEMPTS="4"):
        message_id = stack.send("overruns", 1)
        wait_for(lambda: completed(stack, message_id, "overruns"), 90, what="the second run")
    assert stack.count("runs") == 2
    assert stack.effect_count() == 1
    assert stack.status(message_id, "overruns").attempts == 2


def test_a_message_that_always_overruns_is_dead_lettered_not_lost(stack):
    with stack.worker(RT_MAX_ATTEMPTS="2"):
        message_id = stack.send("overruns", 1000)
        wait_for(lambda: stack.reliable.dead_letters.count() == 1, 90, what="the dead letter")
    assert stack.status(message_id, "overruns").status is Status.POISONED
    (entry,) = stack.reliable.dead_letters.list()
    assert entry.message_id == message_id
    assert entry.detector == "max-attempts"
    assert stack.effect_count() == 0


def test_a_run_longer_than_its_lease_is_not_taken_over_by_a_second_copy(stack):
    if stack.broker.startswith("redis"):
        pytest.skip(
            "the test app's Redis visibility_timeout (3 s) is shorter than this run: Redis "
            "itself redelivers it flagged redelivered, a documented limit of the lease"
        )
    with stack.worker("-c", "2", RT_STUCK="3s") as worker:
        message_id = stack.send("slow_effect", 8)  # over twice the lease
        wait_for(lambda: (stack.dir / f"reached-{message_id}").exists(), 60, what="the run")
        # A second copy of the same message (a producer's retry, a visibility timeout).
        stack.producer.send_task("slow_effect", (8,), headers={MESSAGE_ID_HEADER: message_id})
        wait_for(lambda: completed(stack, message_id, "slow_effect"), 60, what="completion")
        wait_for(lambda: "already processed" in worker.output(), 60, what="the copy's end")
    assert stack.count("runs") == 1
    assert stack.effect_count() == 1
