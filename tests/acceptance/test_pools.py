"""The prefork, threads and solo pools each run a message once and skip its duplicate."""

from __future__ import annotations

import pytest

from celery_reliable import MESSAGE_ID_HEADER
from celery_reliable.testing import wait_for


@pytest.mark.parametrize("pool", ["prefork", "threads", "solo"])
def test_each_pool_runs_a_message_once(postgres_stack, pool):
    stack = postgres_stack
    with stack.worker("-P", pool) as worker:
        headers = {MESSAGE_ID_HEADER: f"pool-{pool}"}
        for _ in range(2):
            stack.producer.send_task("effect", (None,), headers=headers)
        wait_for(lambda: "already processed" in worker.output(), 60, what="the duplicate skip")
    assert stack.effect_count() == 1
    assert stack.count("runs") == 1
