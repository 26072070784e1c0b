"""`celery -A app reliable breakers [--reset NAME]` as an operator runs it (in process)."""

from __future__ import annotations

import json

import pytest


def payment_breaker(reliable):
    """What the app module declares (as tests/acceptance/lifecycle_app.py does)."""
    reliable.breakers.configure("payment-service", failure_threshold=1, reset_timeout=60)


@pytest.fixture
def breakers(cli):
    """``celery reliable breakers ARGS`` for an app with one breaker."""
    return lambda *args: cli.but(prepare=payment_breaker)("breakers", *args)


def test_list_reset_and_a_bad_name(breakers):
    listed = breakers("--json")
    assert listed.exit_code == 0, listed.stderr
    # Without reliable_redis_url the state is each worker's own: not visible from here.
    assert json.loads(listed.stdout) == {"payment-service": "unknown (per process)"}
    reset = breakers("--reset", "payment-service")
    assert (reset.exit_code, reset.stdout.strip()) == (1, "")
    assert "circuit breaker payment-service not reset" in reset.stderr
    bad = breakers("--reset", "nope")
    assert bad.exit_code == 2
    assert "no circuit breaker named 'nope'" in bad.stderr
