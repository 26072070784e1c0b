"""The failure lifecycle inside a worker: retry, poison detection, dead letter, replay.

An embedded worker on the in-memory broker, on each database; the real brokers are covered
by tests/acceptance/test_failure_paths.py.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from datetime import timedelta

import pytest
from celery.contrib.testing.worker import start_worker
from celery.exceptions import Reject
from celery.signals import task_postrun, task_retry
from sqlalchemy import select, update

from celery_reliable import PermanentFailure, Reliable, ReliableTask
from celery_reliable.dead_letters import DeadLetterReason
from celery_reliable.poison import Verdict
from celery_reliable.retry import RetryPolicy
from celery_reliable.store.base import Status
from celery_reliable.testing import wait_for
from tests.support import dead_lettered, make_app

QUICK = RetryPolicy.fixed(2, 0.05)


class Lifecycle:
    """An app with failing tasks, what ran, and the end state of every delivery."""

    def __init__(self, db_url: str, prefix: str) -> None:
        self.app = make_app(
            "memory://",
            db_url,
            prefix,
            reliable_max_attempts=4,
            reliable_retry_max_broker_delay=10,
        )
        self.reliable = Reliable.of(self.app)
        self.reliable.create_schema()
        self.reliable.retry_policies["quick"] = QUICK
        self.reliable.retry_policies["default"] = QUICK  # for tasks that name no policy
        self.runs: Counter[str] = Counter()
        self.ends: list[tuple[str, str]] = []
        self.retried: list[str] = []
        self.broken = True
        self._lock = threading.Lock()
        task_postrun.connect(self._on_postrun, weak=False)
        task_retry.connect(self._on_retry, weak=False)
        self.reliable.add_poison_detector(_evil_arguments)
        define_tasks(self)

    def _on_postrun(self, sender=None, task_id=None, state=None, **_):
        if sender is not None and sender.app is self.app:
            with self._lock:
                self.ends.append((task_id, state))

    def _on_retry(self, sender=None, request=None, **_):
        if sender is not None and sender.app is self.app:
            with self._lock:
                self.retried.append(request.id)

    def ran(self, key: str) -> int:
        with self._lock:
            self.runs[key] += 1
            return self.runs[key]

    def ended(self, task_id: str) -> list[str]:
        with self._lock:
            return [state for tid, state in self.ends if tid == task_id]

    def dead_letter_of(self, result):
        """Wait for the dead letter and return the entry the caller's DeadLettered names."""
        return self.reliable.dead_letters.get(dead_lettered(result).entry_id)

    def close(self) -> None:
        task_postrun.disconnect(self._on_postrun)
        task_retry.disconnect(self._on_retry)
        self.reliable.database.dispose()


def _evil_arguments(context):
    if context.args and context.args[0] == "evil":
        return Verdict(DeadLetterReason.VALIDATION_FAILED, "evil-args", "evil arguments")
    return None


def define_tasks(h: Lifecycle) -> None:
    app = h.app
    options = {"base": ReliableTask, "bind": True, "shared": False}

    @app.task(name="transient", retry_policy="quick", **options)
    def transient(self, failures):
        # A connection error is retried, and the policy (max_retries=2) bounds it too.
        if h.ran(self.request.id) <= failures:
            raise ConnectionResetError("the payment gateway hung up")
        return "paid"

    @app.task(name="no_policy", **options)
    def no_policy(self, transient):
        h.ran(self.request.id)
        raise ConnectionResetError("hung up") if transient else TypeError("a bug")

    @app.task(name="celery_counts", max_retries=1, retry_policy="quick", **options)
    def celery_counts(self):
        h.ran(self.request.id)
        raise self.retry(countdown=0.01)

    @app.task(
        name="autoretried",
        autoretry_for=(LookupError,),
        retry_kwargs={"max_retries": 1, "countdown": 0.01},
        **options,
    )
    def autoretried(self):
        h.ran(self.request.id)
        raise LookupError("not there yet")

    @app.task(name="always_fails", retry_policy="quick", **options)
    def always_fails(self, label="x"):
        h.ran(self.request.id)
        raise ValueError(f"amount {label} is not a number")

    @app.task(name="declared_poison", poison_exceptions=(KeyError,), **options)
    def declared_poison(self):
        h.ran(self.request.id)
        raise KeyError("customer")

    @app.task(name="invalid", **options)
    def invalid(self):
        h.ran(self.request.id)
        raise PermanentFailure("card number fails its checksum", reason="ValidationFailed")

    @app.task(name="rejects", **options)
    def rejects(self):
        h.ran(self.request.id)
        raise Reject("refused by the handler", requeue=False)

    @app.task(
        name="aged",
        retry_policy=RetryPolicy.fixed(5, 1.5),
        max_age=timedelta(seconds=1),
        **options,
    )
    def aged(self):
        h.ran(self.request.id)
        raise ValueError("fails, and is too old by its next run")

    @app.task(name="slow_failure", max_processing_time=timedelta(milliseconds=50), **options)
    def slow_failure(self):
        h.ran(self.request.id)
        time.sleep(0.1)  # the body under test is slow on purpose, not a wait in the test
        raise ValueError("slow and failing")

    @app.task(name="fixable", retry_policy=RetryPolicy.fixed(0, 1), **options)
    def fixable(self, amount):
        h.ran(self.request.id)
        if h.broken:
            raise ValueError("bug in the handler")
        return amount * 2

    @app.task(name="later", retry_policy=RetryPolicy.fixed(1, 120), **options)
    def later(self):
        if h.ran("later") == 1:
            raise ValueError("first run fails; the retry is due in two minutes")
        return "finally"


@pytest.fixture(scope="module")
def lifecycle(module_db):
    h = Lifecycle(*module_db)
    with start_worker(
        h.app, pool="threads", concurrency=2, perform_ping_check=False, shutdown_timeout=60
    ):
        yield h
    h.close()


def test_a_transient_error_is_retried_then_succeeds(lifecycle):
    h = lifecycle
    result = h.app.tasks["transient"].delay(2)
    assert result.get(timeout=30, interval=0.02) == "paid"
    assert h.runs[result.id] == 3
    assert h.retried.count(result.id) == 2  # shown as RETRY twice
    row = h.reliable.store.get_status(result.id, "transient")
    assert (row.status, row.attempts) == (Status.COMPLETED, 3)


def test_the_policy_bounds_transient_errors_too(lifecycle):
    h = lifecycle
    result = h.app.tasks["transient"].delay(9)  # fails every run
    entry = h.dead_letter_of(result)
    assert h.runs[result.id] == 3  # "quick": max_retries=2, not reliable_max_attempts=4
    assert (entry.reason, entry.detector) == (DeadLetterReason.MAX_RETRIES_EXCEEDED, "retry-policy")


def test_without_a_policy_a_bug_is_not_retried_but_a_transient_error_is(lifecycle):
    h = lifecycle
    bug = h.app.tasks["no_policy"].delay(False)
    entry = h.dead_letter_of(bug)
    assert h.runs[bug.id] == 1
    assert (entry.reason, entry.exception_type) == (
        DeadLetterReason.UNHANDLED_EXCEPTION,
        "TypeError",
    )
    with pytest.raises(TypeError):  # the caller's except clause written for plain Celery
        bug.get(timeout=5)
    flaky = h.app.tasks["no_policy"].delay(True)
    entry = h.dead_letter_of(flaky)
    assert h.runs[flaky.id] == 3  # the default policy, here "quick" (max_retries=2)
    assert entry.reason is DeadLetterReason.MAX_RETRIES_EXCEEDED


@pytest.mark.parametrize("task", ["celery_counts", "autoretried"])
def test_celerys_max_retries_counts_as_on_plain_celery(lifecycle, task):
    h = lifecycle
    result = h.app.tasks[task].delay()
    entry = h.dead_letter_of(result)
    assert h.runs[result.id] == 2  # max_retries=1: two runs, the policy adds none
    assert (entry.reason, entry.detector) == (
        DeadLetterReason.MAX_RETRIES_EXCEEDED,
        "celery-max-retries",
    )


def test_an_exhausted_retry_budget_is_dead_lettered_with_everything_kept(lifecycle):
    h = lifecycle
    result = h.app.tasks["always_fails"].apply_async(("12a",), headers={"tenant": "acme"})
    entry = h.dead_letter_of(result)
    assert h.runs[result.id] == 3  # max_retries=2: three runs in all
    assert entry.reason is DeadLetterReason.MAX_RETRIES_EXCEEDED
    assert (entry.detector, entry.attempts) == ("retry-policy", 3)
    assert (entry.message_id, entry.task_id, entry.task_name) == (
        result.id,
        result.id,
        "always_fails",
    )
    assert (entry.args, entry.kwargs, entry.headers["tenant"]) == (["12a"], {}, "acme")
    assert entry.exception_type == "ValueError"
    assert entry.exception_message == "amount 12a is not a number"
    assert "raise ValueError" in entry.traceback
    assert entry.failure_group == "ValueError @ test_failure_lifecycle.py:always_fails"
    assert entry.first_seen_at <= entry.dead_lettered_at
    assert entry.hostname
    assert entry.delivery_info["routing_key"]
    failure = dead_lettered(result)
    assert (failure.reason, failure.entry_id) == ("MaxRetriesExceeded", entry.id)
    assert isinstance(failure, ValueError)  # code written for plain Celery still catches it
    row = h.reliable.store.get_status(result.id, "always_fails")
    assert row.status is Status.POISONED


@pytest.mark.parametrize(
    ("task", "reason", "detector"),
    [
        ("declared_poison", DeadLetterReason.POISON_MESSAGE, "exception-classification"),
        ("invalid", DeadLetterReason.VALIDATION_FAILED, "permanent-failure"),
        ("rejects", DeadLetterReason.MANUAL_REJECTION, "reject"),
        ("slow_failure", DeadLetterReason.POISON_MESSAGE, "timespan"),
    ],
)
def test_poison_is_dead_lettered_after_one_run(lifecycle, task, reason, detector):
    h = lifecycle
    result = h.app.tasks[task].delay()
    entry = h.dead_letter_of(result)
    assert (entry.reason, entry.detector, entry.attempts) == (reason, detector, 1)
    assert h.runs[result.id] == 1


def test_a_user_detector_decides(lifecycle):
    h = lifecycle
    result = h.app.tasks["always_fails"].delay("evil")
    entry = h.dead_letter_of(result)
    assert (entry.reason, entry.detector) == (DeadLetterReason.VALIDATION_FAILED, "evil-args")
    assert h.runs[result.id] == 1


def test_a_message_older_than_max_age_is_not_run_again(lifecycle):
    h = lifecycle
    result = h.app.tasks["aged"].delay()
    entry = h.dead_letter_of(result)
    assert h.runs[result.id] == 1  # the retry arrived too old and was judged before running
    assert (entry.detector, entry.attempts) == ("timespan", 2)
    assert "max_age" in entry.exception_message


def test_a_long_retry_waits_in_the_store_not_on_the_broker(lifecycle):
    h = lifecycle
    outbox = h.reliable.tables.outbox
    result = h.app.tasks["later"].delay()
    wait_for(lambda: result.id in h.retried, 30, what="the first run to fail")
    with h.reliable.database.engine.connect() as conn:
        row = conn.execute(select(outbox).where(outbox.c.task_id == result.id)).one()
    assert row.status == "pending"
    assert timedelta(seconds=100) < row.available_at - row.created_at <= timedelta(seconds=121)
    # Two minutes later (we move the clock of the row, not the test): the relay sends it.
    with h.reliable.database.engine.begin() as conn:
        due_now = update(outbox).where(outbox.c.id == row.id).values(available_at=row.created_at)
        conn.execute(due_now)
    assert h.reliable.relay.drain() == 1
    assert result.get(timeout=30, interval=0.02) == "finally"
    assert h.runs["later"] == 2


def test_replay_after_a_fix_runs_once_even_if_replayed_twice(lifecycle):
    h = lifecycle
    h.broken = True
    result = h.app.tasks["fixable"].delay(21)
    entry = h.dead_letter_of(result)
    h.broken = False  # the fix is deployed
    replay_id = h.reliable.dead_letters.replay(entry.id)
    assert h.reliable.relay.drain() == 1
    replayed = h.app.AsyncResult(replay_id)
    assert replayed.get(timeout=30, interval=0.02) == 42
    after = h.reliable.dead_letters.get(entry.id)
    assert after.replay_count == 1
    assert after.replayed_at is not None
    assert h.reliable.store.get_status(entry.message_id, "fixable").status is Status.COMPLETED
    # A second replay of the same entry is the same message: the inbox absorbs it.
    again = h.app.AsyncResult(h.reliable.dead_letters.replay(entry.id))
    assert h.reliable.relay.drain() == 1
    assert again.get(timeout=30, interval=0.02) == 42  # a duplicate: the first result
    assert h.runs[result.id] == 1
    assert h.runs[replay_id] == 1
    assert h.runs[again.id] == 0
