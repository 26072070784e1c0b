"""ReliableTask as a drop-in for Celery: results, errbacks, canvas, retries, replace, eager.

An embedded worker on each real broker (Redis, RabbitMQ), results in Redis (a backend with
native chords), the store on SQLite: what a caller of plain Celery relies on (issue #14).
"""

from __future__ import annotations

import threading
import uuid
from collections import Counter

import pytest
from celery import Celery, chain, chord, group
from celery.contrib.testing.worker import start_worker
from celery.exceptions import ChordError

from celery_reliable import MESSAGE_ID_HEADER, DeadLettered, Reliable, ReliableTask
from celery_reliable.retry import RetryPolicy
from celery_reliable.testing import wait_for
from tests.support import dead_lettered, make_app, require, unique


class Calls:
    """What ran, counted by key, and the errbacks called."""

    def __init__(self) -> None:
        self.runs: Counter[str] = Counter()
        self.errbacks: list[str] = []
        self._lock = threading.Lock()

    def ran(self, key: str) -> int:
        with self._lock:
            self.runs[key] += 1
            return self.runs[key]


@pytest.fixture(scope="module", params=["redis", "rabbitmq"])
def dropin(request, tmp_path_factory):
    broker = require(request.param)
    backend = require("redis")
    store = f"sqlite:///{tmp_path_factory.mktemp('dropin')}/store.db"
    app = make_app(broker, store, unique(), backend=backend, task_acks_on_failure_or_timeout=False)
    reliable = Reliable.of(app)
    reliable.create_schema()
    calls = Calls()
    options = {"base": ReliableTask, "bind": True, "shared": False}

    @app.task(name="add", **options)
    def add(self, x, y):
        calls.ran(self.request.id)
        return x + y

    @app.task(name="fails", **options)
    def fails(self, label):
        calls.ran(self.request.id)
        raise ValueError(f"bad {label}")

    @app.task(name="collect", **options)
    def collect(self, values):
        return sorted(values)

    @app.task(name="errback", shared=False)
    def errback(request, exc, traceback):
        calls.errbacks.append(request.id)

    @app.task(name="countdown", **options)
    def countdown(self, times):
        calls.ran("countdown")
        if times:
            raise self.replace(countdown.si(times - 1))
        return "replaced 12 times"

    with start_worker(
        app, pool="threads", concurrency=2, perform_ping_check=False, shutdown_timeout=60
    ):
        yield app, calls
    reliable.database.dispose()


def get(result):
    return result.get(timeout=30, interval=0.02)


def test_a_duplicate_returns_the_original_result(dropin):
    app, calls = dropin
    headers = {MESSAGE_ID_HEADER: f"sum-{uuid.uuid4()}"}
    first = app.tasks["add"].apply_async((2, 3), headers=headers)
    assert get(first) == 5
    second = app.tasks["add"].apply_async((2, 3), headers=headers)
    assert get(second) == 5
    assert second.successful()
    assert calls.runs[second.id] == 0  # the body did not run again


def test_a_chain_whose_first_step_already_completed_still_sends_its_next_step(dropin):
    """Issue #13, hole 6: a worker killed after the commit and before Celery sent the next
    step. The redelivery of the first step is a duplicate; it used to end with Ignore, so
    the chain stopped there. Here the first step's message completes alone (as the killed
    run did), then arrives again with the chain's next step attached."""
    app, calls = dropin
    first_id = str(uuid.uuid4())
    assert get(app.tasks["add"].apply_async((1, 2), task_id=first_id)) == 3
    rest = app.tasks["add"].s(10)
    result = chain(app.tasks["add"].s(1, 2).set(task_id=first_id), rest).apply_async()
    assert get(result) == 13  # the next step ran with the stored result
    assert calls.runs[first_id] == 1  # the first step's body ran once
    assert calls.runs[result.id] == 1


def test_a_dead_letter_is_a_failure_the_caller_and_the_errback_see(dropin):
    app, calls = dropin
    result = app.tasks["fails"].apply_async(("x",), link_error=app.tasks["errback"].s())
    failure = dead_lettered(result)
    assert isinstance(failure, ValueError)  # the body's own type, for plain-Celery code
    assert failure.args == ("bad x",)  # and its arguments: it compares as the body's would
    assert (failure.reason, failure.exc_type) == ("UnhandledException", "ValueError")
    assert failure.entry_id is not None
    assert calls.runs[result.id] == 1  # a ValueError, no retry_policy named: not retried
    wait_for(lambda: result.id in calls.errbacks, 30, what="the errback")


def test_a_dead_lettered_task_id_applied_again_fails_as_it_did(dropin):
    """A frozen signature applied twice (Celery's suite does, in a chord's header and then
    its body): the second message is a copy of a dead letter, not run, and fails with the
    same exception, entry id included, calling its errback as the first did."""
    app, calls = dropin
    task_id = str(uuid.uuid4())
    errback = app.tasks["errback"].s()
    first = app.tasks["fails"].apply_async(("again",), task_id=task_id, link_error=errback)
    dead = dead_lettered(first)
    first.forget()  # so that .get() waits for the second message's own ending
    second = app.tasks["fails"].apply_async(("again",), task_id=task_id, link_error=errback)
    again = dead_lettered(second)
    assert isinstance(again, ValueError)
    assert (again.args, again.reason, again.entry_id) == (dead.args, dead.reason, dead.entry_id)
    assert calls.runs[task_id] == 1
    wait_for(lambda: calls.errbacks.count(task_id) == 2, 30, what="both errbacks")


def test_a_chain_with_a_dead_lettered_step_raises(dropin):
    app, _ = dropin
    result = chain(app.tasks["add"].s(1, 2), app.tasks["fails"].s()).apply_async()
    with pytest.raises(DeadLettered):
        get(result)


def test_a_chord_with_a_dead_lettered_part_raises_chord_error(dropin):
    app, _ = dropin
    header = [app.tasks["add"].s(1, 1), app.tasks["fails"].s("part")]
    result = chord(header)(app.tasks["collect"].s())
    with pytest.raises(ValueError, match="bad part"):  # as on plain Celery: the part first
        get(result)
    wait_for(lambda: result.state == "FAILURE", 30, what="the chord body to fail")
    assert isinstance(result.result, ChordError)


def test_a_chord_and_a_group_of_reliable_tasks_give_celerys_results(dropin):
    app, _ = dropin
    assert get(chord([app.tasks["add"].s(i, i) for i in range(3)])(app.tasks["collect"].s())) == [
        0,
        2,
        4,
    ]
    assert get(group(app.tasks["add"].s(i, 1) for i in range(3)).apply_async()) == [1, 2, 3]


def test_a_task_replacing_itself_twelve_times_works(dropin):
    app, calls = dropin
    before = calls.runs["countdown"]
    assert get(app.tasks["countdown"].delay(12)) == "replaced 12 times"
    assert calls.runs["countdown"] - before == 13


def test_a_dead_lettered_failure_is_acknowledged_despite_the_apps_setting(dropin):
    app, _ = dropin
    assert app.conf.task_acks_on_failure_or_timeout is False
    assert app.tasks["fails"].acks_on_failure is True  # a broker DLX gets no second copy


def test_celerys_builtin_tasks_stay_plain_under_task_cls():
    app = Celery("plain_builtins", task_cls="celery_reliable:ReliableTask", set_as_current=False)
    app.conf.update(reliable_database_url="sqlite://", task_always_eager=True)
    Reliable(app)
    unlock = app.tasks["celery.chord_unlock"]
    assert isinstance(unlock, ReliableTask)
    assert (unlock.acks_late, unlock.reject_on_worker_lost) == (False, None)

    @app.task(shared=False, name="mine")
    def mine():
        return 1

    assert app.tasks["mine"].acks_late is True
    # Called as Celery calls it, with no store at all: the pipeline is not involved.
    assert app.tasks["celery.accumulate"].apply((1, 2)).get() == (1, 2)


@pytest.fixture
def eager(tmp_path):
    app = make_app("memory://", f"sqlite:///{tmp_path}/eager.db", unique())
    Reliable.of(app).create_schema()
    calls = Calls()

    @app.task(base=ReliableTask, bind=True, shared=False, retry_policy=RetryPolicy.fixed(2, 0))
    def flaky(self, failures):
        if calls.ran(self.request.id) <= failures:
            raise ConnectionError("the gateway hung up")
        return "paid"

    yield app, flaky, calls
    Reliable.of(app).database.dispose()


def test_eager_retries_run_at_once_per_the_policy(eager):
    _, flaky, calls = eager
    result = flaky.apply((2,))
    assert result.get() == "paid"
    assert calls.runs[result.id] == 3


def test_eager_dead_letter_raises_and_a_duplicate_returns_the_stored_result(eager):
    _, flaky, calls = eager
    failed = flaky.apply((9,))
    with pytest.raises(DeadLettered) as caught:
        failed.get()
    assert isinstance(caught.value, ConnectionError)
    assert calls.runs[failed.id] == 3  # max_retries=2 bounds a transient error
    done = flaky.apply((0,))
    assert flaky.apply((0,), task_id=done.id).get() == "paid"
    assert calls.runs[done.id] == 1
