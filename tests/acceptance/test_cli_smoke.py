"""One command of each `celery reliable` group as a real `celery -A app ...` process.

The other CLI tests run the commands in process (the ``cli`` fixture); these show that
`celery` finds the group through its ``celery.commands`` entry point, loads the app named
by ``-A``, and passes a command's output and exit code through.
"""

from __future__ import annotations

import pytest

from celery_reliable import Reliable
from tests.support import make_app

from .conftest import APP, celery

pytestmark = pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)

LIFECYCLE_APP = "tests.acceptance.lifecycle_app"  # declares the breaker `breakers` lists


@pytest.fixture
def migrated(env):
    reliable = Reliable.of(make_app("memory://", env["RT_DB"], env["RT_PREFIX"]))
    reliable.create_schema()
    reliable.database.dispose()
    return env


@pytest.mark.parametrize(
    ("app", "args", "says"),
    [
        (APP, ("db", "current"), "(up to date)"),
        (APP, ("relay", "--once"), "relayed 0 messages"),
        (APP, ("dlq", "stats", "--json"), '"count": 0'),
        (APP, ("outbox", "stats", "--json"), '"due": 0'),
        (APP, ("inbox", "stats", "--json"), '"poisoned": 0'),
        (APP, ("cleanup", "--dry-run", "--json"), '"skipped": false'),
        (LIFECYCLE_APP, ("breakers", "--json"), '"payment-service": "unknown (per process)"'),
        (APP, ("health", "--ready", "--json"), '"status": "ok"'),
    ],
    ids=["db", "relay", "dlq", "outbox", "inbox", "maintenance", "breakers", "health"],
)
def test_each_group_runs_as_a_celery_process(migrated, app, args, says):
    result = celery(migrated, "reliable", *args, app=app)
    assert result.returncode == 0, result.stdout + result.stderr
    assert says in result.stdout


def test_a_usage_error_is_one_line_and_exit_2(migrated):
    result = celery(
        {**migrated, "RT_BAD_SETTING": "reliable_max_attempts"}, "reliable", "dlq", "list"
    )
    assert result.returncode == 2
    assert "setting 'reliable_max_attempts'" in result.stderr
    assert "Traceback" not in result.stderr
