"""Every `celery reliable ...` command the docs show runs, against a real store.

`tests/unit/test_docs_commands.py` checks that each one parses; this runs each one, in
process, on a migrated SQLite store that holds a dead letter (id 1), a poisoned outbox
row and a quarantined inbox mark, as an operator's store would. A command may report
"nothing to do" or "unhealthy" (exit 1), but never crash. The two that run until stopped
(`relay` without `--once`, `flower`) are run as processes by tests/acceptance.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from types import SimpleNamespace

import click
import pytest
from click.testing import CliRunner
from sqlalchemy import insert

from celery_reliable import Reliable
from celery_reliable.cli import reliable as reliable_group
from celery_reliable.dead_letters import FailedMessage
from tests.support import make_app, unique
from tests.unit.test_docs_commands import SAMPLES, documented_commands

LONG_RUNNING = ("flower", "relay")  # unless --once


def runs_until_stopped(command: str) -> bool:
    return command.split()[0] in LONG_RUNNING and "--once" not in command


def _effect() -> None:
    """The task the seeded rows name; never run here."""


@pytest.fixture(scope="module")
def operated_store(tmp_path_factory: pytest.TempPathFactory) -> Reliable:
    path = tmp_path_factory.mktemp("docs") / "store.sqlite3"
    app = make_app("memory://", f"sqlite:///{path}", unique())
    app.task(name="effect", shared=False)(_effect)  # what the seeded rows are addressed to
    ext = Reliable.of(app)
    ext.create_schema()
    message = FailedMessage(
        message_id="m-1", task_id="t-1", task_name="effect", args=[1], kwargs={}
    )
    assert ext.dead_letters.add(message, "PoisonMessage", detail="seeded") == 1
    # A quarantined inbox mark (m-1) and a poisoned outbox row (1) for the retry commands.
    claim = ext.inbox.claim("m-1", "effect", task_name="effect", owner="docs")
    ext.inbox.quarantine(claim, "seeded")
    row = ext.outbox.build_row(app.signature("effect"), None, None, None, None, {})
    with ext.database.engine.begin() as conn:
        conn.execute(insert(ext.tables.outbox).values({**row, "id": 1, "status": "poisoned"}))
    ext.breakers.configure("x", failure_threshold=5, reset_timeout=60)
    return ext


@pytest.mark.parametrize(
    ("page", "command"),
    [pc for pc in documented_commands() if not runs_until_stopped(pc[1])],
)
def test_documented_command_runs(page: str, command: str, operated_store: Reliable):
    args = [SAMPLES.get(token, token) for token in shlex.split(command)]
    if isinstance(reliable_group.commands.get(args[0]), click.Group) and len(args) == 1:
        args.append("--help")  # the prose names a group, such as `celery reliable dlq`
    result = CliRunner().invoke(
        reliable_group, args, obj=SimpleNamespace(app=operated_store.app), catch_exceptions=True
    )
    context = f"{page}: `reliable {command}` -> exit {result.exit_code}\n{result.output}"
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(context) from result.exception
    assert result.exit_code in (0, 1), context
    assert "Traceback" not in result.output, context


def test_the_long_running_ones_are_few_and_known():
    skipped = {c.split()[0] for _, c in documented_commands() if runs_until_stopped(c)}
    assert skipped <= set(LONG_RUNNING)
    assert Path(__file__).exists()
