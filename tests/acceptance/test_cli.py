"""`celery -A app reliable db ...` and `celery worker` start-up, as a user runs them.

The commands run in process (the ``cli`` fixture); `test_cli_smoke.py` runs each group once
as a real `celery` process. The worker start-up checks run real workers.
"""

from __future__ import annotations

import subprocess

import pytest

from .conftest import APP, celery


def test_db_upgrade_and_current(cli):
    before = cli("db", "current")
    assert before.exit_code == 0, before.stderr
    assert before.stdout.startswith("none (behind head ")
    upgraded = cli("db", "upgrade")
    assert upgraded.exit_code == 0, upgraded.stderr
    assert upgraded.stdout.startswith("store at revision ")
    again = cli("db", "upgrade")  # idempotent
    assert again.exit_code == 0, again.stderr
    after = cli("db", "current")
    assert after.stdout.strip().endswith("(up to date)")


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("reliable_max_attempts", "setting 'reliable_max_attempts'"),
        ("reliable_max_atempts", "unknown setting 'reliable_max_atempts'"),
    ],
)
def test_a_bad_setting_is_a_one_line_error_with_exit_code_2(cli, setting, message):
    result = cli.but(conf={setting: 0})("db", "upgrade")
    assert result.exit_code == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_arguments_exit_2(cli):
    result = cli("db", "downgrade-everything")
    assert result.exit_code == 2
    assert "No such command" in result.stderr


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("reliable_stuck_threshold", "setting 'reliable_stuck_threshold'"),
        ("reliable_max_atempts", "did you mean 'reliable_max_attempts'?"),
    ],
)
def test_a_worker_with_a_bad_setting_refuses_to_start(env, setting: str, message: str):
    result = celery(
        {**env, "RT_BAD_SETTING": setting},
        "worker",
        "-P",
        "solo",
        "--without-mingle",
        "--without-gossip",
    )
    assert result.returncode == 2
    assert message in refusal(result)


def test_a_worker_on_an_unmigrated_store_refuses_to_start_and_says_what_to_run(env):
    result = celery(env, "worker", "-P", "solo", "--without-mingle", "--without-gossip")
    assert result.returncode == 3
    line = refusal(result)
    assert "schema revision none" in line
    assert line.endswith(f"run `celery -A {APP} reliable db upgrade`")


def refusal(result: subprocess.CompletedProcess[str]) -> str:
    """The one line a `celery worker` that refused to start printed: no traceback (the
    first thing a new user meets when they forgot `db upgrade` or mistyped a setting)."""
    assert "Traceback" not in result.stdout + result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, result.stderr
    return errors[0]
