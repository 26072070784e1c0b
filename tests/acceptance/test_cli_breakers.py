"""`celery -A app reliable breakers [--reset NAME]` as an operator runs it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.support import ROOT

APP = "tests.acceptance.lifecycle_app"


def breakers(env, *args):
    return subprocess.run(
        [sys.executable, "-m", "celery", "-A", APP, "reliable", "breakers", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_list_reset_and_a_bad_name(env):
    listed = breakers(env, "--json")
    assert listed.returncode == 0, listed.stderr
    # Without reliable_redis_url the state is each worker's own: not visible from here.
    assert json.loads(listed.stdout) == {"payment-service": "unknown (per process)"}
    reset = breakers(env, "--reset", "payment-service")
    assert (reset.returncode, reset.stdout.strip()) == (1, "")
    assert "circuit breaker payment-service not reset" in reset.stderr
    bad = breakers(env, "--reset", "nope")
    assert bad.returncode == 2
    assert "no circuit breaker named 'nope'" in bad.stderr
