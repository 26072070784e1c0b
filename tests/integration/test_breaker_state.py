"""Breaker state machine in memory and shared through real Redis, one probe per cluster."""

from __future__ import annotations

import multiprocessing
from datetime import timedelta

import pytest
import redis

from celery_reliable import ConfigurationError
from celery_reliable.breakers import Breakers, _wait
from celery_reliable.testing import wait_for
from tests.support import require, unique


class Down(Exception):
    pass


class NotTheServicesFault(Exception):
    pass


def fail(breakers: Breakers, name: str, times: int, exc: BaseException | None = None) -> None:
    for _ in range(times):
        admission = breakers.admit(name)
        assert admission.allowed
        breakers.record_failure(name, exc or Down(), admission)


@pytest.fixture(params=["memory", "redis"])
def breakers(request):
    url = require("redis") if request.param == "redis" else None
    namespace = unique()
    yield Breakers(url, namespace=namespace)
    if url:
        client = redis.Redis.from_url(url)
        for key in client.scan_iter(f"*{namespace}*"):
            client.delete(key)


def test_opens_after_the_threshold_and_holds_messages_until_it_may_half_open(breakers):
    breakers.configure("pay", failure_threshold=3, reset_timeout=30, exclude=[NotTheServicesFault])
    fail(breakers, "pay", 2)
    fail(breakers, "pay", 2, NotTheServicesFault())  # excluded: counts as a success
    assert breakers.states() == {"pay": "closed"}
    fail(breakers, "pay", 3)
    assert breakers.states() == {"pay": "open"}
    held = breakers.admit("pay")
    assert not held.allowed
    assert 25 < held.retry_after <= 33  # the rest of reset_timeout, plus up to 10% jitter


def test_waits_are_at_least_half_a_second_and_spread_out():
    waits = {_wait(0.01) for _ in range(50)}
    assert all(0.5 <= w <= 0.55 for w in waits)
    assert len(waits) > 1


def test_after_reset_timeout_one_probe_runs_and_its_success_closes(breakers):
    breakers.configure("pay", failure_threshold=1, reset_timeout=0.3)
    fail(breakers, "pay", 1)
    probe = wait_for(lambda: (a := breakers.admit("pay")).allowed and a, 5, what="half-open")
    assert probe.probe
    assert breakers.states() == {"pay": "half-open"}
    assert not breakers.admit("pay").allowed  # one probe at a time
    breakers.record_success("pay", probe)
    assert breakers.states() == {"pay": "closed"}
    assert breakers.admit("pay").allowed


def test_a_failing_probe_opens_it_again_and_reset_closes_it(breakers):
    transitions = []
    breakers.add_listener(lambda *t: transitions.append(t[1:]))
    breakers.configure("pay", failure_threshold=1, reset_timeout=0.2)
    fail(breakers, "pay", 1)
    probe = wait_for(lambda: (a := breakers.admit("pay")).allowed and a, 5, what="half-open")
    breakers.record_failure("pay", Down(), probe)
    assert breakers.states() == {"pay": "open"}
    breakers.reset("pay")
    assert breakers.states() == {"pay": "closed"}
    assert transitions[:3] == [("closed", "open"), ("open", "half-open"), ("half-open", "open")]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"failure_threshold": 0}, "failure_threshold"),
        ({"reset_timeout": -1}, "reset_timeout"),
        ({"on_open": "explode"}, "on_open"),
        ({"exclude": ["ValueError"]}, "exclude"),
    ],
)
def test_bad_configuration_names_the_argument(kwargs, message):
    with pytest.raises(ConfigurationError, match=message):
        Breakers(None, namespace="x").configure("pay", **kwargs)
    with pytest.raises(ConfigurationError, match="no circuit breaker named 'nope'"):
        Breakers(None, namespace="x").admit("nope")


def _admit(url, namespace, barrier, results):
    breakers = Breakers(url, namespace=namespace)
    breakers.configure("pay", failure_threshold=1, reset_timeout=0.2, probe_timeout=30)
    barrier.wait()
    admission = breakers.admit("pay")
    results.put((admission.allowed, admission.probe))


def test_workers_share_the_state_and_only_one_probes_in_half_open():
    url = require("redis")
    namespace = unique()
    opener = Breakers(url, namespace=namespace)
    opener.configure("pay", failure_threshold=1, reset_timeout=0.2, probe_timeout=30)
    fail(opener, "pay", 1)
    other = Breakers(url, namespace=namespace)  # another worker sees it open
    other.configure("pay", failure_threshold=1, reset_timeout=0.2)
    assert other.states() == {"pay": "open"}
    wait_for(lambda: opener._open_for(opener._breaker("pay")) > 0.25, 5, what="reset timeout")
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(4), context.Queue()
    processes = [
        context.Process(target=_admit, args=(url, namespace, barrier, results)) for _ in range(4)
    ]
    for process in processes:
        process.start()
    outcomes = sorted(results.get(timeout=60) for _ in processes)
    for process in processes:
        process.join(30)
    assert outcomes == [(False, False)] * 3 + [(True, True)]
    opener.reset("pay")
    assert other.states() == {"pay": "closed"}


def test_a_dead_probers_lock_expires():
    url = require("redis")
    breakers = Breakers(url, namespace=unique())
    breakers.configure(
        "pay", failure_threshold=1, reset_timeout=0.1, probe_timeout=timedelta(seconds=0.5)
    )
    fail(breakers, "pay", 1)
    wait_for(lambda: breakers.admit("pay").probe, 5, what="the first probe")  # then it "dies"
    assert not breakers.admit("pay").allowed
    wait_for(lambda: breakers.admit("pay").probe, 5, what="the probe lock to expire")
    breakers.reset("pay")
