"""`celery -A app reliable health` as a Kubernetes exec probe runs it: exit codes and output
(in process; `test_cli_smoke.py` runs it as the probe's process)."""

from __future__ import annotations

import json

import pytest

from celery_reliable import Reliable


@pytest.fixture
def migrated(cli):
    reliable = Reliable.of(cli.app())
    reliable.create_schema()
    reliable.database.dispose()
    return cli


def test_ready_and_live_exit_0_on_a_working_host(migrated):
    ready = migrated("health", "--ready", "--json")
    assert ready.exit_code == 0, ready.stdout + ready.stderr
    assert json.loads(ready.stdout)["status"] == "ok"
    live = migrated("health", "--live")
    assert live.exit_code == 0
    assert live.stdout.strip().endswith("live: ok")


def test_an_unreachable_broker_is_not_ready_exit_1(migrated):
    down = migrated.but(broker="redis://127.0.0.1:9/0")  # nothing listens on port 9
    result = down("health", "--ready", "--json")
    assert result.exit_code == 1, result.stdout + result.stderr
    checks = {c["name"]: c["status"] for c in json.loads(result.stdout)["checks"]}
    assert checks["broker"] == "unhealthy"
    assert checks["store"] == "ok"


def test_no_mode_runs_both_probes(migrated):
    result = migrated("health")
    assert result.exit_code == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[-2:] == ["ready: ok", "live: ok"]
