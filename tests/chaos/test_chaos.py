"""Chaos: relays and workers SIGKILLed at random while messages flow end to end.

outbox.enqueue (committed in batches) → 2 relay processes → broker → 2 prefork workers
running ReliableTask with a database effect. A chaos loop kills a random relay or worker
(the whole process group, like a lost host) every 0.3-1.5 s and starts it again. When the
producer is done the chaos stops, and every message's effect must be there exactly once.

Short profile by default (CI): 1,000 messages. The long one, on demand:
``RELIABLE_CHAOS_MESSAGES=10000 python -m pytest tests/chaos``. ``RELIABLE_CHAOS_SEED``
replays a run's kill schedule (the seed is printed).
"""

from __future__ import annotations

import os
import random
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from celery_reliable import ReliableTask
from celery_reliable.store.base import Status
from tests.acceptance.conftest import APP, Stack, _declared_elsewhere
from tests.support import ROOT, WorkerProcess, database_url, require, wait_for

MESSAGES = int(os.environ.get("RELIABLE_CHAOS_MESSAGES", "1000"))
SEED = int(os.environ.get("RELIABLE_CHAOS_SEED", str(random.randrange(1_000_000))))
CHUNK = 20  # messages per producer transaction
MAX_KILLS = max(20, MESSAGES // 25)
#: Longer than any message waits in the queue here; shorter than the drain.
UNSEEN_AFTER = timedelta(seconds=60)
#: Time to drain after the chaos: restarted workers and reclaimed rows take a while.
DRAIN_SECONDS = 120 + MESSAGES * 0.06


class Cluster:
    """Relay and worker processes that can be killed and restarted by name."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        # Fast recovery so a short run exercises it: claims of killed relays come back
        # after 3 s; Redis hands a killed worker's messages out again after 3 s.
        self.env = {**os.environ, "PYTHONPATH": str(ROOT), **stack.env, "RT_STUCK": "3s"}
        self.env["RT_RELAY_BATCH"] = "100"
        self.processes: dict[str, WorkerProcess] = {}
        self.kills = 0

    def start(self, name: str) -> None:
        log = self.stack.dir / f"{name}.log"
        if name.startswith("relay"):
            args = ["-A", APP, "reliable", "relay"]
        else:
            args = [
                "-A", APP, "worker", "-P", "prefork", "-c", "2", "-n", f"{name}@%h",
                "--without-mingle", "--without-gossip", "--loglevel=WARNING",
            ]  # fmt: skip
        self.processes[name] = WorkerProcess(args, self.env, log)

    def kill(self, name: str) -> None:
        self.processes[name].kill()
        self.kills += 1

    def stop_all(self) -> None:
        for process in self.processes.values():
            process.stop()


def produce(stack: Stack, done: threading.Event) -> None:
    try:
        for start in range(0, MESSAGES, CHUNK):
            with Session(stack.reliable.database.engine) as session, session.begin():
                for n in range(start, min(start + CHUNK, MESSAGES)):
                    stack.reliable.outbox.enqueue(
                        session, stack.producer.signature("effect", (None,)), message_id=f"c-{n}"
                    )
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
def stack(request: pytest.FixtureRequest, tmp_path: Path):
    s = Stack(require(request.param), database_url("postgresql", tmp_path), tmp_path)
    yield s
    s.close()


@pytest.mark.timeout(DRAIN_SECONDS + 300)
def test_random_kills_lose_nothing_and_double_nothing(stack):
    # The producer knows "effect" is a ReliableTask (its body runs in the workers), so
    # stuck recovery may send it again when no inbox saw it.
    stack.producer.tasks.pop("effect")
    stack.producer.task(base=ReliableTask, name="effect", shared=False)(_declared_elsewhere)
    print(f"chaos: {MESSAGES} messages, seed {SEED}", file=sys.stderr)
    chaos = random.Random(SEED)
    cluster = Cluster(stack)
    names = ["relay-1", "relay-2", "worker-1", "worker-2"]
    for name in names:
        cluster.start(name)
    produced = threading.Event()
    producer = threading.Thread(target=produce, args=(stack, produced), daemon=True)
    try:
        producer.start()
        pause = threading.Event()  # never set: a timed pause between kills
        while not produced.is_set() or stack.effect_count() < MESSAGES * 0.9:
            pause.wait(chaos.uniform(0.3, 1.5))  # the kill schedule, from the seed
            victim = chaos.choice(names)
            cluster.kill(victim)
            cluster.start(victim)
            if cluster.kills >= MAX_KILLS:
                break
        producer.join(timeout=120)

        def drained() -> bool:
            # What beat's stuck recovery does every minute: a message the broker lost after
            # accepting it (kombu's Redis transport, a worker killed mid-BRPOP) is sent
            # again once no inbox has seen it for a while.
            stack.reliable.maintenance.recover_stuck(
                locked=False, redeliver_unseen_after=UNSEEN_AFTER
            )
            return stack.effect_count() >= MESSAGES

        try:
            wait_for(
                drained,
                DRAIN_SECONDS,
                interval=1.0,
                what=f"{MESSAGES} effects after {cluster.kills} kills",
            )
        finally:
            print(f"chaos: state at the end: {diagnose(stack)}", file=sys.stderr)
        assert stack.outbox_count("sent") == MESSAGES
    finally:
        cluster.stop_all()
    with stack.reliable.database.engine.connect() as conn:
        effects = stack.effects
        rows, distinct = conn.execute(
            select(func.count(), func.count(effects.c.message_id.distinct()))
        ).one()
        status = stack.reliable.tables.inbox_status
        completed = conn.execute(
            select(func.count()).where(status.c.status == Status.COMPLETED.value)
        ).scalar_one()
    print(
        f"chaos: {cluster.kills} kills, {rows} effects, {stack.count('runs')} body runs",
        file=sys.stderr,
    )
    assert cluster.kills >= 3
    assert (rows, distinct, completed) == (MESSAGES, MESSAGES, MESSAGES)
