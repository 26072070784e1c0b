"""ReliableTask end to end with an embedded worker, on each database."""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from datetime import timedelta

import pytest
from celery.contrib.testing.worker import start_worker
from celery.signals import task_postrun
from sqlalchemy import Column, Integer, MetaData, String, Table, func, select, text, update
from sqlalchemy.exc import OperationalError

from celery_reliable import MESSAGE_ID_HEADER, Reliable, ReliableTask
from celery_reliable.clock import utcnow
from celery_reliable.message import REDELIVERED_HEADER
from celery_reliable.store.base import Status
from celery_reliable.testing import wait_for
from tests.support import dead_lettered, make_app


class Harness:
    """One app on a fresh store with an embedded worker, a business table, and what ran."""

    def __init__(self, db_url: str, table_prefix: str) -> None:
        self.app = make_app("memory://", db_url, table_prefix, reliable_max_attempts=3)
        self.reliable = Reliable.of(self.app)
        self.reliable.create_schema()
        self.metadata = MetaData()
        self.effects = Table(
            f"{table_prefix}effects",
            self.metadata,
            Column("message_id", String(255)),
            Column("amount", Integer),
        )
        self.metadata.create_all(self.reliable.database.engine)
        self.body_runs: Counter[str] = Counter()
        self.finished: list[tuple[str, str]] = []
        self.release = threading.Event()
        self._lock = threading.Lock()
        task_postrun.connect(self._on_postrun, weak=False)
        define_tasks(self)

    def _on_postrun(self, sender=None, task_id=None, state=None, **_):
        if sender is not None and sender.app is self.app:
            with self._lock:
                self.finished.append((task_id, state))

    def reset(self) -> None:
        with self._lock:
            self.body_runs.clear()
            self.finished.clear()
        self.release.clear()
        with self.reliable.database.engine.begin() as conn:
            conn.execute(self.effects.delete())

    def ran(self, key: str) -> None:
        with self._lock:
            self.body_runs[key] += 1

    def effect_rows(self):
        with self.reliable.database.engine.connect() as conn:
            return conn.execute(select(self.effects.c.message_id, self.effects.c.amount)).all()

    def states_of(self, task_id: str) -> list[str]:
        with self._lock:
            return [state for tid, state in self.finished if tid == task_id]

    def wait_states(self, task_id: str, count: int, timeout: float = 30) -> list[str]:
        """The end states of ``task_id``'s first ``count`` deliveries, in order."""
        wait_for(lambda: len(self.states_of(task_id)) >= count, timeout, what=f"{task_id} runs")
        return self.states_of(task_id)

    def status(self, message_id: str, key: str):
        return self.reliable.store.get_status(message_id, key)

    def wait_completed(self, message_id: str, key: str) -> None:
        wait_for(
            lambda: (row := self.status(message_id, key)) and row.status is Status.COMPLETED,
            30,
            what=f"{message_id} to complete",
        )

    def close(self) -> None:
        task_postrun.disconnect(self._on_postrun)
        self.reliable.database.dispose()


def define_tasks(h: Harness) -> None:
    app = h.app

    @app.task(base=ReliableTask, bind=True, shared=False, name="charge")
    def charge(self, amount, fail=False):
        h.ran(self.request.id)
        with self.transaction() as session:
            session.execute(h.effects.insert().values(message_id=self.request.id, amount=amount))
            if fail and self.request.retries == 0:
                raise self.retry(countdown=0.1)
        return {"charged": amount}

    @app.task(
        base=ReliableTask,
        bind=True,
        shared=False,
        name="renamed",
        handler_key="billing.charge-card",
        legacy_handler_keys=("charge_card",),
    )
    def renamed(self):
        h.ran("renamed")

    @app.task(base=ReliableTask, bind=True, shared=False, name="twice")
    def twice(self):
        with self.transaction() as session:
            session.execute(h.effects.insert().values(message_id="a", amount=1))
        with self.transaction() as session:
            session.execute(h.effects.insert().values(message_id="b", amount=2))

    @app.task(base=ReliableTask, bind=True, shared=False, name="flaky", max_retries=10)
    def flaky(self):
        h.ran("flaky")
        raise self.retry(countdown=0.05)

    @app.task(base=ReliableTask, bind=True, shared=False, name="whoami")
    def whoami(self):
        return self.message_id

    @app.task(base=ReliableTask, bind=True, shared=False, name="slow")
    def slow(self):
        h.ran("slow")
        assert h.release.wait(30)
        return "done"

    @app.task(base=ReliableTask, bind=True, shared=False, name="vanish")
    def vanish(self):
        h.ran("vanish")
        if h.body_runs["vanish"] == 1:  # as if a store crash lost the unflushed claim
            with h.reliable.database.engine.begin() as conn:
                conn.execute(h.reliable.tables.inbox_status.delete())
        with self.transaction() as session:
            session.execute(h.effects.insert().values(message_id="vanish", amount=1))

    @app.task(base=ReliableTask, bind=True, shared=False, name="cut")
    def cut(self):
        h.ran("cut")
        with self.transaction() as session:
            session.execute(h.effects.insert().values(message_id="cut", amount=1))
            if h.body_runs["cut"] == 1:
                _kill_own_connection(session)


def _kill_own_connection(session) -> None:
    if session.bind.dialect.name == "postgresql":
        pid = session.execute(text("SELECT pg_backend_pid()")).scalar()
        kill = ("SELECT pg_terminate_backend(:pid)", {"pid": pid})
    else:
        pid = session.execute(text("SELECT CONNECTION_ID()")).scalar()
        kill = (f"KILL {int(pid)}", {})
    with session.bind.connect() as other:
        other.execute(text(kill[0]), kill[1])
        other.commit()


@pytest.fixture(scope="module")
def worker_harness(module_db):
    h = Harness(*module_db)
    with start_worker(
        h.app, pool="threads", concurrency=2, perform_ping_check=False, shutdown_timeout=60
    ):
        yield h
    h.close()


@pytest.fixture
def h(worker_harness):
    worker_harness.reset()
    return worker_harness


def get(result, timeout=30):
    return result.get(timeout=timeout, interval=0.02)


def test_effects_commit_with_the_completion_mark(h):
    result = h.app.tasks["charge"].delay(5)
    assert get(result) == {"charged": 5}
    assert h.effect_rows() == [(result.id, 5)]
    row = h.status(result.id, "charge")
    assert (row.status, row.attempts) == (Status.COMPLETED, 1)
    assert h.reliable.inbox.decode_result(row.result) == {"charged": 5}


def test_a_failure_inside_the_transaction_leaves_no_effect_and_the_retry_runs(h):
    result = h.app.tasks["charge"].delay(7, fail=True)
    assert get(result) == {"charged": 7}
    assert h.body_runs[result.id] == 2
    assert h.effect_rows() == [(result.id, 7)]  # the first run's insert was rolled back
    assert h.status(result.id, "charge").attempts == 2


def test_a_redelivered_task_id_does_not_run_again(h):
    charge = h.app.tasks["charge"]
    task_id = str(uuid.uuid4())
    assert get(charge.apply_async((3,), task_id=task_id)) == {"charged": 3}
    charge.apply_async((3,), task_id=task_id)
    assert h.wait_states(task_id, 2) == ["SUCCESS", "SUCCESS"]  # the duplicate returns it
    assert h.body_runs[task_id] == 1
    assert h.effect_rows() == [(task_id, 3)]
    # Celery's backend keeps a SUCCESS once stored: the original result stays readable.
    assert get(charge.AsyncResult(task_id)) == {"charged": 3}


def test_a_business_key_duplicate_returns_the_original_result(h):
    charge = h.app.tasks["charge"]
    headers = {MESSAGE_ID_HEADER: f"order-{uuid.uuid4()}"}
    assert get(charge.apply_async((9,), headers=headers)) == {"charged": 9}
    second = charge.apply_async((9,), headers=headers)
    assert get(second) == {"charged": 9}
    assert second.successful()
    assert sum(h.body_runs.values()) == 1
    assert len(h.effect_rows()) == 1


def test_a_renamed_handler_keeps_its_history_through_legacy_keys(h):
    # What the task did under its old key, before the rename, is in the store:
    old = h.reliable.inbox.claim("order-7", "charge_card", task_name="charge_card", owner="v1")
    h.reliable.inbox.complete(old, "old result")
    result = h.app.tasks["renamed"].apply_async(headers={MESSAGE_ID_HEADER: "order-7"})
    assert get(result) == "old result"
    assert h.body_runs["renamed"] == 0
    fresh = h.app.tasks["renamed"].apply_async(headers={MESSAGE_ID_HEADER: "order-8"})
    assert h.wait_states(fresh.id, 1) == ["SUCCESS"]
    assert h.body_runs["renamed"] == 1
    assert h.status("order-8", "billing.charge-card").status is Status.COMPLETED
    assert fresh.state == "SUCCESS"


def test_entering_the_transaction_twice_is_refused_and_nothing_commits(h):
    result = h.app.tasks["twice"].delay()
    with pytest.raises(Exception, match="entered twice"):
        get(result)
    # The first block's writes waited for the body to return: rolled back with the run,
    # which is dead-lettered as a misuse; the second block never began.
    assert h.effect_rows() == []
    assert h.status(result.id, "twice").status is Status.POISONED


def test_called_as_a_function_the_task_is_plain_code(h):
    assert h.app.tasks["charge"](4) == {"charged": 4}
    assert h.effect_rows() == [(None, 4)]
    with h.reliable.database.engine.connect() as conn:
        inbox_status = h.reliable.tables.inbox_status
        query = select(func.count()).where(inbox_status.c.message_id.is_(None))
        assert conn.execute(query).scalar() == 0


def test_the_body_sees_its_message_id_to_pass_on_as_an_idempotency_key(h):
    whoami = h.app.tasks["whoami"]
    assert get(whoami.apply_async(headers={MESSAGE_ID_HEADER: "order-9-charge"})) == (
        "order-9-charge"
    )
    plain = whoami.delay()
    assert get(plain) == plain.id  # without a business key, the task id
    assert whoami() is None  # called as a function: there is no message


def test_attempts_are_capped_by_max_attempts_and_the_message_is_dead_lettered(h):
    result = h.app.tasks["flaky"].delay()  # retries itself forever
    failure = dead_lettered(result)
    assert h.body_runs["flaky"] == 3
    row = h.status(result.id, "flaky")
    assert (row.status, row.attempts) == (Status.POISONED, 3)
    entry = h.reliable.dead_letters.get(failure.entry_id)
    assert (entry.reason, entry.detector, entry.attempts) == ("PoisonMessage", "max-attempts", 3)
    assert entry.message_id == result.id


def test_a_second_delivery_while_the_first_runs_waits_then_is_a_duplicate(h):
    slow = h.app.tasks["slow"]
    headers = {MESSAGE_ID_HEADER: f"concurrent-{uuid.uuid4()}"}
    first = slow.apply_async(headers=headers)
    wait_for(lambda: h.body_runs["slow"] == 1, 30, what="first run to start")
    second = slow.apply_async(headers=headers)
    assert h.wait_states(second.id, 1) == ["IGNORED"]  # it deferred itself
    h.release.set()
    assert get(first) == "done"
    assert get(second) == "done"  # the deferred copy was a duplicate
    assert h.body_runs["slow"] == 1


def test_a_lost_database_connection_mid_transaction_is_processed_later_exactly_once(h):
    if h.reliable.database.dialect == "sqlite":
        pytest.skip("SQLite has no server connection to lose")
    h.app.tasks["cut"].apply_async(headers={MESSAGE_ID_HEADER: "cut-1"})
    h.wait_completed("cut-1", "cut")
    assert h.body_runs["cut"] == 2
    assert h.effect_rows() == [("cut", 1)]
    assert h.status("cut-1", "cut").attempts == 2


def test_a_claim_that_committed_but_whose_answer_was_lost_resumes_at_once(h, monkeypatch):
    """The link drops after the claim's commit: its copy takes the claim over, no lease wait.

    The claim row looks like a live run's, so without the hint the copy would wait out
    reliable_stuck_threshold (5 minutes here) before running.
    """
    store = h.reliable.inbox.store
    real_insert = store.insert_claim
    dropped: list[bool] = []

    def insert_then_drop_the_link(*args, **kwargs):
        inserted = real_insert(*args, **kwargs)
        if not dropped:
            dropped.append(inserted)
            raise OperationalError("INSERT", {}, ConnectionResetError("link lost after commit"))
        return inserted

    monkeypatch.setattr(store, "insert_claim", insert_then_drop_the_link)
    result = h.app.tasks["charge"].apply_async((5,), headers={MESSAGE_ID_HEADER: "uncertain-1"})
    h.wait_completed("uncertain-1", "charge")  # 30 s at most: far from the 5-minute lease
    assert dropped == [True]  # the first claim did commit
    assert h.effect_rows() == [(result.id, 5)]
    assert sum(h.body_runs.values()) == 1
    # The committed claim never ran the body: its copy resumed the same attempt.
    assert h.status("uncertain-1", "charge").attempts == 1


def claimed_by_a_dead_run(h, message_id: str):
    """A claim held elsewhere whose lease stopped being renewed (past the grace, short of
    reliable_stuck_threshold, 5 minutes here)."""
    claim = h.reliable.inbox.claim(message_id, "charge", task_name="charge", owner="elsewhere")
    t = h.reliable.tables.inbox_status
    aged = utcnow() - h.reliable.inbox.renewal_grace - timedelta(seconds=1)
    with h.reliable.database.engine.begin() as conn:
        conn.execute(
            update(t).where(t.c.message_id == message_id).values(processing_started_at=aged)
        )
    return claim


def test_a_copy_carrying_the_redelivered_header_takes_a_dead_runs_claim_over(h):
    # A delivery the broker flagged redelivered re-publishes its waiting copy with this
    # header (the broker does not flag a new message). The copy must still be judged as
    # flagged: a dead run's claim is taken over once its lease is past the grace, not after
    # the whole threshold.
    claimed_by_a_dead_run(h, "flagged-1")
    result = h.app.tasks["charge"].apply_async(
        (3,), headers={MESSAGE_ID_HEADER: "flagged-1", REDELIVERED_HEADER: True}
    )
    h.wait_completed("flagged-1", "charge")  # 30 s at most: far from the 5-minute lease
    assert h.effect_rows() == [(result.id, 3)]
    assert h.status("flagged-1", "charge").attempts == 2


def test_a_copy_without_the_flag_or_the_header_waits_for_the_threshold(h):
    claim = claimed_by_a_dead_run(h, "unflagged-1")
    result = h.app.tasks["charge"].apply_async((3,), headers={MESSAGE_ID_HEADER: "unflagged-1"})
    assert h.wait_states(result.id, 1) == ["IGNORED"]  # deferred: in flight elsewhere
    assert h.body_runs[result.id] == 0
    h.reliable.inbox.complete(claim, {"charged": 0})  # the copy then ends as a duplicate
    assert h.wait_states(result.id, 2)[1] == "SUCCESS"
    assert h.body_runs[result.id] == 0


def test_a_claim_lost_by_the_store_is_processed_again_not_dropped(h):
    h.app.tasks["vanish"].apply_async(headers={MESSAGE_ID_HEADER: "vanish-1"})
    h.wait_completed("vanish-1", "vanish")
    assert h.body_runs["vanish"] == 2
    assert h.effect_rows() == [("vanish", 1)]  # the first run's writes were rolled back


def test_an_eager_run_that_cannot_proceed_says_why_instead_of_deferring(h):
    h.reliable.inbox.claim("eager-1", "charge", task_name="charge", owner="elsewhere")
    result = h.app.tasks["charge"].apply((1,), headers={MESSAGE_ID_HEADER: "eager-1"})
    assert result.state == "FAILURE"
    assert "cannot run now (in flight elsewhere)" in str(result.result)
    assert h.effect_rows() == []
