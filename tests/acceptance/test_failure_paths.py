"""The failure lifecycle in real `celery worker` processes on Redis and RabbitMQ.

Transient failure then success, an exhausted retry budget, a poison exception, and a replay
after the fix: each ends with the broker queue empty and the outcome in the store.
"""

from __future__ import annotations

import pytest

from celery_reliable import DeadLetterReason
from celery_reliable.store.base import Status
from celery_reliable.testing import wait_for

from .conftest import Stack, _declared_elsewhere

APP = "tests.acceptance.lifecycle_app"
TASKS = ("gateway", "always_fails", "poison", "fixable")


@pytest.fixture
def failing(postgres_stack: Stack) -> Stack:
    for name in TASKS:  # the producer can replay what it knows the name of
        postgres_stack.producer.task(name=name, shared=False)(_declared_elsewhere)
    return postgres_stack


def completed(stack: Stack, message_id: str, key: str) -> bool:
    row = stack.status(message_id, key)
    return row is not None and row.status is Status.COMPLETED


def only_dead_letter(stack: Stack, message_id: str):
    dl = stack.reliable.dead_letters
    wait_for(lambda: dl.count() == 1, 60, what=f"{message_id} to be dead-lettered")
    (entry,) = dl.list()
    assert entry.message_id == message_id
    return entry


def test_a_transient_failure_is_retried_until_it_succeeds(failing):
    with failing.worker(app=APP):
        message_id = failing.send("gateway", 2)
        wait_for(lambda: completed(failing, message_id, "gateway"), 60, what="success")
        assert failing.queue_depth() == 0
    assert failing.count("gateway") == 3
    assert failing.status(message_id, "gateway").attempts == 3
    assert failing.reliable.dead_letters.count() == 0


def test_an_exhausted_retry_budget_ends_in_the_dead_letter_store(failing):
    with failing.worker(app=APP):
        message_id = failing.send("always_fails")
        entry = only_dead_letter(failing, message_id)
        assert failing.queue_depth() == 0
    assert (entry.reason, entry.attempts) == (DeadLetterReason.MAX_RETRIES_EXCEEDED, 3)
    assert failing.count("always_fails") == 3
    assert entry.exception_message == "this handler has a bug"
    assert failing.status(message_id, "always_fails").status is Status.POISONED


def test_a_poison_exception_is_dead_lettered_after_one_run(failing):
    with failing.worker(app=APP):
        message_id = failing.send("poison")
        entry = only_dead_letter(failing, message_id)
        assert failing.queue_depth() == 0
    assert (entry.reason, entry.detector) == (
        DeadLetterReason.POISON_MESSAGE,
        "exception-classification",
    )
    assert failing.count("poison") == 1


def test_replay_after_the_fix_runs_the_message_once(failing):
    (failing.dir / "broken").touch()
    with failing.worker(app=APP):
        message_id = failing.send("fixable")
        entry = only_dead_letter(failing, message_id)
        (failing.dir / "broken").unlink()  # the fix is deployed
        failing.reliable.dead_letters.replay(entry.id)
        assert failing.reliable.relay.drain() == 1
        wait_for(lambda: completed(failing, message_id, "fixable"), 60, what="the replay")
        assert failing.queue_depth() == 0
    assert failing.count("fixable") == 2
    assert failing.reliable.dead_letters.get(entry.id).replay_count == 1
