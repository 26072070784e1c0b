"""Retry policies: delays, budgets and validation (pure logic)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from celery_reliable import ConfigurationError
from celery_reliable.retry import BUILT_IN_DEFAULT, DEFAULT, RetryPolicies, RetryPolicy


def test_max_retries_counts_retries_not_runs():
    policy = RetryPolicy.fixed(2, 5)
    assert [policy.allows_retry_after(run) for run in (1, 2, 3)] == [True, True, False]
    assert not RetryPolicy.fixed(0, 1).allows_retry_after(1)


def test_fixed_delays_are_all_the_same():
    policy = RetryPolicy.fixed(3, timedelta(seconds=7))
    assert [policy.delay(run) for run in (1, 2, 3)] == [7.0, 7.0, 7.0]
    assert RetryPolicy.fixed(1, "2m").delay(1) == 120.0
    assert RetryPolicy.fixed(1, 0).delay(1) == 0.0


def test_exponential_doubles_up_to_the_cap_without_jitter():
    policy = RetryPolicy.exponential(10, base_delay=1, max_delay=10, jitter=False)
    assert [policy.delay(run) for run in range(1, 7)] == [1, 2, 4, 8, 10, 10]
    assert policy.delay(10_000) == 10  # no overflow on absurd run numbers


def test_jitter_stays_between_half_and_the_full_step():
    policy = RetryPolicy.exponential(10, base_delay=4, max_delay=100)
    for run, step in ((1, 4), (2, 8), (3, 16)):
        delays = {policy.delay(run) for _ in range(200)}
        assert all(step / 2 <= d <= step for d in delays)
        assert len(delays) > 1  # spread out, not one value


@pytest.mark.parametrize(
    "build",
    [
        lambda: RetryPolicy.fixed(-1, 1),
        lambda: RetryPolicy.fixed(True, 1),
        lambda: RetryPolicy.fixed(1, -3),
        lambda: RetryPolicy.fixed(1, "soon"),
        lambda: RetryPolicy.exponential(3, base_delay=10, max_delay=5),
    ],
)
def test_bad_policies_are_refused_with_a_clear_error(build):
    with pytest.raises(ConfigurationError, match="RetryPolicy"):
        build()


def test_named_policies_resolve_and_unknown_names_say_what_exists():
    policies = RetryPolicies()
    assert policies.resolve(None) is BUILT_IN_DEFAULT
    payment = RetryPolicy.exponential(5, 1, 60)
    policies["payment-retry"] = payment
    assert policies.resolve("payment-retry") is payment
    assert policies.resolve(payment) is payment
    with pytest.raises(ConfigurationError, match=r"no retry policy named 'nope'.*payment-retry"):
        policies.resolve("nope")
    with pytest.raises(ConfigurationError, match="must be a RetryPolicy"):
        policies["bad"] = {"max_retries": 3}  # type: ignore[assignment]
    with pytest.raises(ConfigurationError):
        policies.resolve(3)  # type: ignore[arg-type]


def test_the_default_can_be_replaced_but_never_removed():
    policies = RetryPolicies()
    mine = RetryPolicy.fixed(1, 1)
    policies[DEFAULT] = mine
    assert policies.resolve(None) is mine
    del policies[DEFAULT]
    assert policies.resolve(None) is BUILT_IN_DEFAULT
    assert list(policies) == [DEFAULT]
