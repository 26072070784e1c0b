"""`celery -A app reliable health` as a Kubernetes exec probe runs it: exit codes and output."""

from __future__ import annotations

import json

import pytest

from celery_reliable import Reliable
from tests.support import make_app

from .conftest import celery


@pytest.fixture
def migrated(env):
    reliable = Reliable.of(make_app("memory://", env["RT_DB"], env["RT_PREFIX"]))
    reliable.create_schema()
    reliable.database.dispose()
    return env


@pytest.mark.parametrize("db_url", ["sqlite", "postgresql"], indirect=True)
def test_ready_and_live_exit_0_on_a_working_host(migrated):
    ready = celery(migrated, "reliable", "health", "--ready", "--json")
    assert ready.returncode == 0, ready.stdout + ready.stderr
    assert json.loads(ready.stdout)["status"] == "ok"
    live = celery(migrated, "reliable", "health", "--live")
    assert live.returncode == 0
    assert live.stdout.strip().endswith("live: ok")


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_an_unreachable_broker_is_not_ready_exit_1(migrated):
    down = {**migrated, "RT_BROKER": "redis://127.0.0.1:9/0"}  # nothing listens on port 9
    result = celery(down, "reliable", "health", "--ready", "--json", timeout=120)
    assert result.returncode == 1, result.stdout + result.stderr
    checks = {c["name"]: c["status"] for c in json.loads(result.stdout)["checks"]}
    assert checks["broker"] == "unhealthy"
    assert checks["store"] == "ok"


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_no_mode_runs_both_probes(migrated):
    result = celery(migrated, "reliable", "health")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[-2:] == ["ready: ok", "live: ok"]
