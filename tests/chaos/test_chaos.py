"""Chaos: relays and workers SIGKILLed at random while messages flow end to end.

outbox.enqueue (committed in batches) → 2 relay processes → broker → 2 prefork workers
running ReliableTask with a database effect. The kit's kill loop (celery_reliable.testing)
kills a random relay or worker (the whole process group, like a lost host) every 0.3-1.5 s
and starts it again. When the producer is done the chaos stops, and every message's effect
must be there exactly once: each id once, none missing, none invented.

Short profile by default (CI): 1,000 messages. The long one, on demand:
``RELIABLE_CHAOS_MESSAGES=10000 python -m pytest tests/chaos``. ``--reliable-chaos-seed N``
(or ``RELIABLE_CHAOS_SEED``) replays a run's kill schedule; the seed is in pytest's header.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from celery_reliable import ReliableTask
from celery_reliable.store.base import Status
from celery_reliable.testing import (
    ProcessGroup,
    celery_command,
    column_values,
    wait_for,
    wait_for_exactly_once,
)
from tests.acceptance.conftest import APP, Stack, _declared_elsewhere
from tests.support import ROOT, database_url, require

MESSAGES = int(os.environ.get("RELIABLE_CHAOS_MESSAGES", "1000"))
CHUNK = 20  # messages per producer transaction
MAX_KILLS = max(20, MESSAGES // 25)
#: Longer than any message waits in the queue here; shorter than the drain.
UNSEEN_AFTER = timedelta(seconds=60)
#: Time to drain after the chaos: restarted workers and reclaimed rows take a while.
DRAIN_SECONDS = 120 + MESSAGES * 0.06
RELAY = ["-A", APP, "reliable", "relay"]
WORKER = ["-A", APP, "worker", "-P", "prefork", "-c", "2"]
WORKER += ["--without-mingle", "--without-gossip", "--loglevel=WARNING"]


def produce(stack: Stack, done: threading.Event) -> None:
    try:
        for start in range(0, MESSAGES, CHUNK):
            with Session(stack.reliable.database.engine) as session, session.begin():
                for n in range(start, min(start + CHUNK, MESSAGES)):
                    # The effect records the task id: the same as the message id here.
                    signature = stack.producer.signature("effect", (None,), task_id=f"c-{n}")
                    stack.reliable.outbox.enqueue(session, signature, message_id=f"c-{n}")
            time.sleep(0.1)  # a steady stream rather than one burst (pacing, not a wait)
    finally:
        done.set()


def diagnose(stack: Stack) -> dict[str, object]:
    """Where the messages are: for a failed run's report."""
    status = stack.reliable.tables.inbox_status
    with stack.reliable.database.engine.connect() as conn:
        by_status = dict(
            conn.execute(select(status.c.status, func.count()).group_by(status.c.status)).all()
        )
    return {
        "effects": stack.effect_count(),
        "outbox_sent": stack.outbox_count("sent"),
        "outbox_pending": stack.outbox_count("pending"),
        "inbox": by_status,
        "queued": stack.queue_depth(),
    }


@pytest.fixture(params=["redis", "rabbitmq"])
def stack(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stack]:
    s = Stack(require(request.param), database_url("postgresql", tmp_path), tmp_path)
    yield s
    s.close()


@pytest.mark.timeout(DRAIN_SECONDS + 300)
def test_random_kills_lose_nothing_and_double_nothing(stack, process_group, kill_loop):
    # The producer knows "effect" is a ReliableTask (its body runs in the workers), so
    # stuck recovery may send it again when no inbox saw it.
    stack.producer.tasks.pop("effect")
    stack.producer.task(base=ReliableTask, name="effect", shared=False)(_declared_elsewhere)
    group: ProcessGroup = process_group
    # Fast recovery so a short run exercises it: claims of killed relays come back after
    # 3 s; Redis hands a killed worker's messages out again after 3 s.
    group.env.update(PYTHONPATH=str(ROOT), **stack.env, RT_STUCK="3s", RT_RELAY_BATCH="100")
    group.cwd = ROOT
    for name in ("relay-1", "relay-2"):
        group.start(name, celery_command(*RELAY))
    for name in ("worker-1", "worker-2"):
        group.start(name, celery_command(*WORKER, "-n", f"{name}@%h"))
    produced = threading.Event()
    producer = threading.Thread(target=produce, args=(stack, produced), daemon=True)
    with kill_loop(group, interval=(0.3, 1.5), max_kills=MAX_KILLS) as chaos:
        print(f"chaos: {MESSAGES} messages, {chaos.summary()}", file=sys.stderr)
        producer.start()
        wait_for(
            lambda: (
                chaos.finished or (produced.is_set() and stack.effect_count() >= MESSAGES * 0.9)
            ),
            DRAIN_SECONDS,
            interval=0.5,
            what="the producer to finish and 90% of the effects",
        )
    producer.join(timeout=120)

    def recover() -> None:
        # What beat's stuck recovery does every minute: a message the broker lost after
        # accepting it (kombu's Redis transport, a worker killed mid-BRPOP) is sent again
        # once no inbox has seen it for a while.
        stack.reliable.maintenance.recover_stuck(locked=False, redeliver_unseen_after=UNSEEN_AFTER)

    try:
        report = wait_for_exactly_once(
            [f"c-{n}" for n in range(MESSAGES)],
            lambda: column_values(stack.reliable.database.engine, stack.effects.c.message_id),
            DRAIN_SECONDS,
            interval=1.0,
            nudge=recover,
        )
    finally:
        print(f"chaos: {chaos.summary()}; at the end: {diagnose(stack)}", file=sys.stderr)
    group.stop_all()
    print(f"chaos: {report}; {stack.count('runs')} body runs", file=sys.stderr)
    assert len(chaos.kills) >= 3
    assert stack.outbox_count("sent") == MESSAGES
    status = stack.reliable.tables.inbox_status
    with stack.reliable.database.engine.connect() as conn:
        completed = conn.execute(
            select(func.count()).where(status.c.status == Status.COMPLETED.value)
        ).scalar_one()
    assert completed == MESSAGES
