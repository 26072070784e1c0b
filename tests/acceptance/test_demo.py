"""The README's first command keeps working: the demo, on the embedded default and on servers."""

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, make_url, text

from tests.support import ROOT, require, unique


def run_demo(**overrides: str) -> str:
    """Run ``python -m workers.demo`` as a user would; its output, after checking the exit."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("CELERY_BROKER_URL", "RELIABLE_DATABASE_URL")
    }
    result = subprocess.run(
        [sys.executable, "-m", "workers.demo"],
        cwd=ROOT,
        env={**env, **overrides},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def assert_the_story(stdout: str) -> None:
    """Every step the README promises shows, with the effects it claims."""
    assert "relay published 1 message -> receipts: 1" in stdout
    assert "state DUPLICATE" in stdout
    assert "payments still: 1" in stdout
    assert "DEAD_LETTERED after 3 runs" in stdout
    assert "MaxRetriesExceeded" in stdout
    assert "DEAD_LETTERED after 1 run, no retries: PoisonMessage" in stdout
    assert "circuit breaker stays closed" in stdout
    assert "replay" in stdout
    assert stdout.rstrip().endswith("exactly-once effects held")


def test_the_demo_runs_on_the_embedded_default():
    stdout = run_demo()
    assert "broker filesystem://" in stdout
    assert "store sqlite:///" in stdout
    assert_the_story(stdout)


@pytest.fixture
def fresh_postgres() -> Iterator[str]:
    """A new, empty PostgreSQL database, as a user's would be (the demo creates its tables)."""
    admin = make_url(require("postgresql"))
    name = unique("demo_")
    engine = create_engine(admin, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        yield admin.set(database=name).render_as_string(hide_password=False)
        with engine.connect() as conn:
            conn.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
    finally:
        engine.dispose()


@pytest.mark.parametrize("broker", ["redis", "rabbitmq"])
def test_the_same_demo_runs_on_servers(broker: str, fresh_postgres: str):
    url = require(broker)
    stdout = run_demo(CELERY_BROKER_URL=url, RELIABLE_DATABASE_URL=fresh_postgres)
    assert f"broker {url.split('://')[0]}://" in stdout
    assert "store postgresql+psycopg://" in stdout
    assert_the_story(stdout)
