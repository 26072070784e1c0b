"""The README's first command keeps working: the demo, on the embedded default and on servers."""

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, make_url, text

from tests.support import ROOT, require, unique

#: Run the demo as ``python -m workers.demo`` does, where the packages of the extras (the
#: README's demo command installs none) cannot be imported.
BASE_INSTALL_ONLY = """
import importlib.abc, runpy, sys

EXTRAS = {"psycopg", "pymysql", "redis", "flower", "opentelemetry", "pytest", "selenium"}

class Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in EXTRAS:
            raise ModuleNotFoundError(f"No module named {name!r} (not in the base install)")
        return None

sys.meta_path.insert(0, Absent())
runpy.run_module("workers.demo", run_name="__main__", alter_sys=True)
"""


def run_demo(*, base_install_only: bool = False, **overrides: str) -> str:
    """Run ``python -m workers.demo`` as a user would; its output, after checking the exit."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("CELERY_BROKER_URL", "RELIABLE_DATABASE_URL")
    }
    command = ["-c", BASE_INSTALL_ONLY] if base_install_only else ["-m", "workers.demo"]
    result = subprocess.run(
        [sys.executable, *command],
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
    assert "a DUPLICATE, not run; .get() returns the original result" in stdout
    assert "payments still: 1" in stdout
    assert "DEAD_LETTERED after 3 runs" in stdout
    assert "MaxRetriesExceeded" in stdout
    assert "DEAD_LETTERED after 1 run, no retries: PoisonMessage" in stdout
    assert "circuit breaker stays closed" in stdout
    assert "replay" in stdout
    assert stdout.rstrip().endswith("exactly-once effects held")


def test_the_demo_runs_on_the_embedded_default_with_the_base_install():
    """The README's demo command installs no extra: the demo needs none."""
    stdout = run_demo(base_install_only=True)
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
