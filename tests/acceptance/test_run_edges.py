"""The edges of a run in real prefork workers: a hard time limit, a run longer than its lease,
and a run killed while its lease is renewed.

Before the fix, a hard time limit acknowledged the message as FAILURE with its inbox row
left ``processing`` (lost); a run longer than ``reliable_stuck_threshold`` was taken over
by a second copy while alive (its effect twice), and so was a run longer than Redis's
visibility timeout, at once, by its restored copy flagged redelivered.
"""

from __future__ import annotations

import socket
from datetime import timedelta

import pytest
from celery import Celery, chord

from celery_reliable import MESSAGE_ID_HEADER, DeadLettered
from celery_reliable.store.base import Status
from celery_reliable.testing import wait_for
from tests.acceptance.conftest import _stack
from tests.acceptance.test_intake import task_events
from tests.support import require, unique


def completed(stack, message_id: str, key: str) -> bool:
    row = stack.status(message_id, key)
    return row is not None and row.status is Status.COMPLETED


def overrunning_worker(stack, backend: str, *extra: str, attempts: int = 4):
    """A worker for runs killed by their hard time limit: results in ``backend``, up to
    ``attempts`` runs a message, and a lease of 3 s for a killed run's claim."""
    return stack.worker(*extra, RT_MAX_ATTEMPTS=str(attempts), RT_STUCK="3s", RT_BACKEND=backend)


def caller(stack, backend: str) -> Celery:
    """An application's caller: a plain Celery app, separate from the worker's and the
    producer's, on the worker's broker, queue and result backend."""
    app = Celery("caller", broker=stack.broker, backend=backend, set_as_current=False)
    app.conf.task_default_queue = f"q_{stack.prefix}"
    return app


def waiting_caller(stack, backend: str, times: int):
    """Send ``overruns(times)`` with an errback; return its message id and a caller's result.

    The caller's result is read from a separate app on the worker's result backend, as an
    application's caller would; the test waits on it with ``.get()``.
    """
    message_id = f"overruns-{unique()}"
    sent = stack.producer.send_task(
        "overruns",
        (times,),
        headers={MESSAGE_ID_HEADER: message_id},
        link_error=stack.producer.signature("errback"),
    )
    return message_id, caller(stack, backend).AsyncResult(sent.id)


def test_a_run_killed_by_its_hard_time_limit_is_redelivered_and_its_caller_gets_the_result(
    stack,
):
    # Old code: Celery stored FAILURE (TimeLimitExceeded) and ran the errback when it killed
    # the run, then requeued the message: the caller's .get() raised at once although the
    # redelivery completed the message a few seconds later.
    backend, states = require("redis"), []
    with (
        overrunning_worker(stack, backend, "-E") as worker,
        task_events(stack.producer) as events,
    ):
        message_id, result = waiting_caller(stack, backend, 1)
        try:
            # on_message sees each state the backend publishes for the task, while it waits.
            assert result.get(timeout=90, interval=0.05, on_message=states.append) == 2
            assert result.state == "SUCCESS"
        finally:
            result.forget()
        assert "FAILURE" not in [meta["status"] for meta in states], states
        assert "hard time limit (2s) exceeded" in worker.output()
        wait_for(
            lambda: [e for e in events if e["type"] == "task-succeeded"], 30, what="the events"
        )
    ours = [e for e in events if e.get("uuid") == result.id]
    types = [e["type"] for e in ours]
    # Flower shows RETRY after the kill (the killed run's last event), never FAILURE.
    assert types[types.index("task-rejected") + 1] == "task-retried", types
    retried = [e for e in ours if e["type"] == "task-retried"]
    assert [e["exception"] for e in retried] == ["TimeLimitExceeded(2)"], ours
    assert "task-failed" not in types
    assert stack.count("runs") == 2
    assert stack.count("errbacks") == 0  # sent at the kill, it would have run by now
    assert stack.effect_count() == 1
    assert stack.status(message_id, "overruns").attempts == 2


def test_a_chord_part_killed_by_its_hard_time_limit_counts_once_with_its_redelivery_result(
    stack,
):
    # Old code: Celery counted the killed part as failed at the kill. The chord's .get()
    # raised the part's TimeLimitExceeded at once, and the callback never ran: it failed
    # with ChordError, although the part's redelivery completed a few seconds later (the
    # backend counts a part once, so its success came too late to count).
    backend, states = require("redis"), []
    with (
        caller(stack, backend) as app,
        overrunning_worker(stack, backend, "-E") as worker,
        task_events(stack.producer) as events,
    ):
        header = [app.signature("chord_part", (part, part == 1)) for part in range(3)]
        result = chord(header)(app.signature("gather"))
        killed = result.parent.results[1]
        try:
            # The part's first ending, with the states the backend published meanwhile (the
            # old code's was FAILURE: not raised here, so that the chord's ending is told).
            first = killed.get(timeout=90, propagate=False, on_message=states.append)
            assert result.get(timeout=90) == [[0, 1], [1, 2], [2, 1]]
        finally:
            result.forget()
            result.parent.forget()
        assert first == [1, 2]  # from the redelivery, the part's second run
        assert "FAILURE" not in [meta["status"] for meta in states], states
        assert "hard time limit (2s) exceeded" in worker.output()
        # Every message is delivered; the worker then stops warm, finishing what it runs.
        wait_for(lambda: stack.queue_depth() == 0, 30, what="the queue to drain")
    # A second dispatch of the callback (its id is the chord's) would have been received,
    # and run unless the worker stopped first.
    assert stack.count("callbacks") == 1
    assert worker.output().count(f"gather[{result.id}] received") == 1
    assert "task-failed" not in [e["type"] for e in events]
    assert stack.count(f"runs-{killed.id}") == 2
    assert stack.status(killed.id, "chord_part").attempts == 2


def test_a_message_that_always_overruns_is_dead_lettered_and_its_caller_told_so(stack):
    backend, states = require("redis"), []
    with overrunning_worker(stack, backend, attempts=2) as worker:
        message_id, result = waiting_caller(stack, backend, 1000)
        try:
            with pytest.raises(DeadLettered) as raised:
                result.get(timeout=90, interval=0.05, on_message=states.append)
        finally:
            result.forget()
        wait_for(lambda: stack.count("errbacks"), 30, what="the errback of the dead letter")
    # The dead letter's errback, and at most one for each later copy that ended quarantined
    # (Redis's 3 s visibility timeout here restores the message while a run waits; a copy's
    # errback may still be queued when the worker stops): none for the killed runs, which
    # the old code reported as failures, two more here.
    copies = worker.output().count("is quarantined; this copy is not run")
    assert 1 <= stack.count("errbacks") <= 1 + copies
    assert raised.value.reason == "PoisonMessage"
    assert [meta["status"] for meta in states].count("FAILURE") == 1, states  # the dead letter
    (entry,) = stack.reliable.dead_letters.list()
    assert raised.value.entry_id == entry.id
    assert entry.message_id == message_id
    assert stack.status(message_id, "overruns").status is Status.POISONED
    assert entry.detector == "max-attempts"
    assert stack.count("runs") == 2
    assert stack.effect_count() == 0


def test_a_run_longer_than_its_lease_is_not_taken_over_by_a_second_copy(stack):
    with stack.worker("-c", "2", RT_STUCK="3s") as worker:
        message_id = stack.send("slow_effect", 8)  # over twice the lease
        wait_for(lambda: (stack.dir / f"reached-{message_id}").exists(), 60, what="the run")
        if stack.broker.startswith("redis"):
            # The test app's visibility_timeout (3 s) is shorter than the run: kombu restores
            # the running message flagged redelivered, and the copy waits for the live run.
            wait_for(lambda: "in flight elsewhere" in worker.output(), 30, what="the restore")
        # A second copy of the same message (a producer's retry, a visibility timeout).
        stack.producer.send_task("slow_effect", (8,), headers={MESSAGE_ID_HEADER: message_id})
        wait_for(lambda: completed(stack, message_id, "slow_effect"), 60, what="completion")
        wait_for(lambda: "already processed" in worker.output(), 60, what="the copy's end")
    assert stack.count("runs") == 1
    assert stack.effect_count() == 1


@pytest.fixture
def rabbitmq_postgresql(tmp_path):
    """The production pair. The test adds a second queue, deleted after it."""
    for stack in _stack(("rabbitmq", "postgresql"), tmp_path):
        stack.other_queue = f"q_{stack.prefix}other"
        yield stack
        with stack.producer.connection_for_write() as conn:
            conn.default_channel.queue_delete(stack.other_queue)
            conn.default_channel.exchange_delete(stack.other_queue)


def test_a_killed_run_stops_renewing_and_a_waiting_copy_takes_over_once_the_lease_expires(
    rabbitmq_postgresql,
):
    # A worker SIGKILLed mid-run renews its lease no more. A copy of the message without the
    # broker's redelivered flag (a producer's retry, a copy that was waiting for the run)
    # takes over once the lease has expired, not before, and runs; the killed run never
    # committed, so the effect happens once. RabbitMQ's own redelivery of the killed run's
    # message carries the flag and would take over once the lease is no longer renewed
    # (docs/inbox.md): here it waits in the first worker's queue, which nobody consumes
    # until the end.
    stack, lease = rabbitmq_postgresql, timedelta(seconds=3)
    second_name = f"second-{stack.prefix}@{socket.gethostname()}"
    (stack.dir / "hold").touch()
    with (
        stack.worker(RT_STUCK="3s") as first,
        stack.worker("-Q", stack.other_queue, "-n", second_name, RT_STUCK="3s") as second,
    ):
        message_id = stack.send("effect", "before_commit")
        wait_for(lambda: (stack.dir / "reached-before_commit").exists(), 60, what="the run")
        claimed = stack.status(message_id, "effect").processing_started_at
        wait_for(
            lambda: stack.status(message_id, "effect").processing_started_at > claimed,
            10,
            what="a lease renewal",
        )
        wait_for(lambda: "ready." in second.output(), 60, what="the second worker")
        stack.producer.send_task(
            "effect",
            ("before_commit",),
            headers={MESSAGE_ID_HEADER: message_id},
            queue=stack.other_queue,
        )
        wait_for(lambda: "in flight elsewhere" in second.output(), 30, what="the copy to wait")
        renewed = stack.status(message_id, "effect").processing_started_at  # or a bit later
        first.kill()  # main process and pool child at once: nothing renews any more
        (stack.dir / "hold").unlink()  # the run that takes over must not block
        wait_for(lambda: completed(stack, message_id, "effect"), 30, what="the takeover")
        row = stack.status(message_id, "effect")
        assert row.attempts == 2
        assert row.processing_started_at >= renewed + lease  # not before it expired
        # The killed run's own message, redelivered, finds the run done.
        stack.producer.control.add_consumer(
            f"q_{stack.prefix}", destination=[second_name], reply=True, timeout=10
        )
        wait_for(lambda: "already processed" in second.output(), 30, what="the redelivery")
    assert stack.count("runs") == 2
    assert stack.effect_count() == 1
