"""The inbox against each real database: claims, fencing, duplicates, poison, races."""

import threading
from collections import Counter
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from celery_reliable import LostOwnership, Reliable, StoreUnavailable
from celery_reliable.clock import utcnow
from celery_reliable.inbox import Outcome
from celery_reliable.store.base import Status
from tests.support import make_app


@pytest.fixture
def reliable(db_url, table_prefix):
    ext = Reliable.of(make_app("memory://", db_url, table_prefix, reliable_max_attempts=3))
    ext.create_schema()
    yield ext
    ext.database.dispose()


def claim(reliable, message_id="m-1", key="k", **kwargs):
    return reliable.inbox.claim(message_id, key, task_name="t", owner="test", **kwargs)


def status_of(reliable, message_id="m-1", key="k"):
    return reliable.store.get_status(message_id, key)


def stop_renewing(reliable, message_id="m-1"):
    """Age the message's lease past the renewal grace, as if its run had died."""
    t = reliable.tables.inbox_status
    aged = utcnow() - reliable.inbox.renewal_grace - timedelta(seconds=1)
    with reliable.database.engine.begin() as conn:
        conn.execute(
            update(t).where(t.c.message_id == message_id).values(processing_started_at=aged)
        )


def test_first_delivery_runs_and_records_both_rows(reliable):
    first = claim(reliable)
    assert (first.outcome, first.attempts, first.version) == (Outcome.RUN, 1, 1)
    with reliable.database.engine.connect() as conn:
        message = conn.execute(select(reliable.tables.inbox_message)).one()
    assert (message.message_id, message.task_name) == ("m-1", "t")
    assert message.first_seen_at.tzinfo is not None
    assert status_of(reliable).status is Status.PROCESSING


def test_completed_message_is_a_duplicate_with_its_result(reliable):
    first = claim(reliable)
    reliable.inbox.complete(first, {"charged": 5})
    again = claim(reliable, redelivered=True)
    assert again.outcome is Outcome.DUPLICATE
    assert reliable.inbox.decode_result(again.result) == {"charged": 5}


def test_a_redelivery_waits_for_a_renewed_lease_and_takes_over_a_dead_one(reliable):
    first = claim(reliable)
    assert claim(reliable).outcome is Outcome.IN_FLIGHT
    # A flagged copy of a live run (a Redis visibility timeout) comes back when the lease
    # would run out unrenewed, not after the whole threshold.
    waiting = claim(reliable, redelivered=True)
    assert waiting.outcome is Outcome.IN_FLIGHT
    assert timedelta(0) < waiting.retry_in <= reliable.inbox.renewal_grace
    stop_renewing(reliable)
    assert claim(reliable).outcome is Outcome.IN_FLIGHT  # unflagged: the threshold holds
    second = claim(reliable, redelivered=True)
    assert (second.outcome, second.attempts, second.version) == (Outcome.RUN, 2, 2)
    # The superseded run can no longer complete: its writes would double the effect.
    with pytest.raises(LostOwnership):
        reliable.inbox.complete(first, "stale")
    reliable.inbox.complete(second, "fresh")
    assert reliable.inbox.decode_result(status_of(reliable).result) == "fresh"


def test_a_failed_run_is_claimed_again_at_once(reliable):
    first = claim(reliable)
    assert reliable.inbox.fail(first, "ValueError: boom")
    retry = claim(reliable)
    assert (retry.outcome, retry.attempts) == (Outcome.RUN, 2)


def test_max_attempts_quarantines_and_keeps_the_row(reliable):
    for attempt in (1, 2, 3):
        stop_renewing(reliable)
        run = claim(reliable, redelivered=True)
        assert (run.outcome, run.attempts) == (Outcome.RUN, attempt)
    stop_renewing(reliable)
    exhausted = claim(reliable, redelivered=True)
    assert (exhausted.outcome, exhausted.attempts) == (Outcome.EXHAUSTED, 3)
    assert status_of(reliable).status is Status.PROCESSING  # the caller quarantines it
    reliable.inbox.quarantine(exhausted, "used up its attempts")
    assert claim(reliable, redelivered=True).outcome is Outcome.POISONED
    with pytest.raises(LostOwnership):  # a second quarantine of the same claim is fenced
        reliable.inbox.quarantine(exhausted, "again")
    row = status_of(reliable)
    assert (row.status, row.attempts) == (Status.POISONED, 3)


def test_legacy_keys_count_as_done(reliable):
    old = claim(reliable, key="charge_card")
    reliable.inbox.complete(old, 7)
    renamed = claim(reliable, key="billing.charge-card", legacy_keys=("charge_card",))
    assert renamed.outcome is Outcome.DUPLICATE
    assert reliable.inbox.decode_result(renamed.result) == 7
    assert claim(reliable, key="billing.refund").outcome is Outcome.RUN


def test_handler_keys_and_message_ids_are_independent_and_case_sensitive(reliable):
    assert claim(reliable, "Order-1").outcome is Outcome.RUN
    assert claim(reliable, "order-1").outcome is Outcome.RUN
    assert claim(reliable, "order-1", key="other").outcome is Outcome.RUN
    assert claim(reliable, "ordér-1 ✓").outcome is Outcome.RUN


def test_completion_inside_a_rolled_back_transaction_leaves_the_claim_open(reliable):
    run = claim(reliable)
    with reliable.database.engine.connect() as conn:
        transaction = conn.begin()
        reliable.inbox.complete(run, 1, connection=conn)
        transaction.rollback()
    assert status_of(reliable).status is Status.PROCESSING
    reliable.inbox.complete(run, 1)
    assert status_of(reliable).status is Status.COMPLETED


def test_a_vanished_claim_is_never_taken_as_done(reliable):
    """A store that lost an unflushed claim (crash) must make the run try again."""
    run = claim(reliable)
    with reliable.database.engine.begin() as conn:
        conn.execute(reliable.tables.inbox_status.delete())
    with pytest.raises(StoreUnavailable, match="vanished"):
        reliable.inbox.complete(run, 1)
    assert status_of(reliable) is None


def race(count, action):
    """Run ``action`` in ``count`` threads released at once; their results."""
    barrier = threading.Barrier(count)
    results = []

    def run():
        barrier.wait()
        results.append(action())

    threads = [threading.Thread(target=run) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return results


def test_racing_deliveries_run_the_message_once(reliable):
    """Eight threads (own connections) claim one message at once: exactly one may run."""
    outcomes = race(8, lambda: claim(reliable, "race").outcome)
    assert Counter(outcomes) == {Outcome.RUN: 1, Outcome.IN_FLIGHT: 7}


def test_racing_redeliveries_take_over_once(reliable):
    """Redelivered copies race for a crashed claim: the version fence lets one win, and
    the fresh lease of its claim makes the others wait for it."""
    claim(reliable, "crashed")
    stop_renewing(reliable, "crashed")
    claims = race(6, lambda: claim(reliable, "crashed", redelivered=True))
    assert Counter(c.outcome for c in claims) == {Outcome.RUN: 1, Outcome.IN_FLIGHT: 5}
    assert [c.version for c in claims if c.outcome is Outcome.RUN] == [2]
    assert status_of(reliable, "crashed").attempts == 2
