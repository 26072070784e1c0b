"""The inbox's decision table: what a delivery may do with an existing status row."""

from datetime import datetime, timedelta, timezone

import pytest

from celery_reliable.inbox import Action, decide
from celery_reliable.store.base import Status, StatusRow

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)
LEASE = timedelta(minutes=5)
GRACE = timedelta(seconds=25)  # renewal_grace of that threshold


def row(status, attempts=1, started_ago=timedelta(seconds=1), version=1):
    return StatusRow("key", status, attempts, version, NOW - started_ago, None)


def verdict(r, redelivered=False, resumes_version=None, max_attempts=3, resumes_unrun=False):
    return decide(
        r,
        redelivered=redelivered,
        now=NOW,
        stuck_threshold=LEASE,
        renewal_grace=GRACE,
        max_attempts=max_attempts,
        resumes_version=resumes_version,
        resumes_unrun=resumes_unrun,
    )


def test_completed_is_a_duplicate_even_when_redelivered():
    assert verdict(row(Status.COMPLETED), redelivered=True) is Action.DUPLICATE


def test_poisoned_stays_poisoned():
    assert verdict(row(Status.POISONED, attempts=1), redelivered=True) is Action.ALREADY_POISONED


def test_fresh_processing_without_redelivery_is_in_flight_elsewhere():
    assert verdict(row(Status.PROCESSING)) is Action.IN_FLIGHT


def test_a_redelivery_waits_for_a_run_whose_lease_is_still_renewed():
    # A Redis visibility timeout or a lost RabbitMQ connection flags a copy of a live run.
    assert verdict(row(Status.PROCESSING), redelivered=True) is Action.IN_FLIGHT
    renewed = row(Status.PROCESSING, started_ago=GRACE - timedelta(seconds=1))
    assert verdict(renewed, redelivered=True) is Action.IN_FLIGHT


def test_a_redelivery_takes_over_a_run_that_stopped_renewing_its_lease():
    crashed = row(Status.PROCESSING, started_ago=GRACE + timedelta(seconds=1))
    assert verdict(crashed, redelivered=True) is Action.TAKE_OVER
    assert verdict(crashed) is Action.IN_FLIGHT  # unflagged: the threshold still holds


def test_a_stale_lease_is_taken_over_without_redelivery():
    stale = row(Status.PROCESSING, started_ago=LEASE + timedelta(seconds=1))
    assert verdict(stale) is Action.TAKE_OVER


def test_a_deferred_copy_resumes_its_own_abandoned_claim_only():
    assert verdict(row(Status.PROCESSING, version=4), resumes_version=4) is Action.TAKE_OVER
    assert verdict(row(Status.PROCESSING, version=5), resumes_version=4) is Action.IN_FLIGHT


def test_a_failed_run_is_retried_at_once():
    assert verdict(row(Status.FAILED)) is Action.TAKE_OVER


@pytest.mark.parametrize("status", [Status.FAILED, Status.PROCESSING])
def test_max_attempts_poisons_instead_of_running(status):
    dead = GRACE * 2  # a PROCESSING row's run stopped renewing
    assert verdict(row(status, 3, dead), redelivered=True) is Action.POISON
    assert verdict(row(status, 2, dead), redelivered=True) is Action.TAKE_OVER


def test_a_live_run_on_its_last_attempt_is_left_alone():
    assert verdict(row(Status.PROCESSING, attempts=3)) is Action.IN_FLIGHT


def test_resuming_a_claim_that_never_ran_is_the_same_attempt():
    unrun = row(Status.PROCESSING, attempts=3, version=4)  # the 3rd attempt's claim, unrun
    assert verdict(unrun, resumes_version=4, resumes_unrun=True) is Action.RESUME
    assert verdict(unrun, resumes_version=4) is Action.POISON  # the 3rd attempt ran


def test_the_unrun_hint_counts_only_for_the_claim_it_names():
    moved_on = row(Status.PROCESSING, attempts=2, version=5, started_ago=LEASE * 2)
    assert verdict(moved_on, resumes_version=4, resumes_unrun=True) is Action.TAKE_OVER
    failed = row(Status.FAILED, attempts=2, version=4)  # that claim's run ended: it ran
    assert verdict(failed, resumes_version=4, resumes_unrun=True) is Action.TAKE_OVER
