"""What an operator meets first: the CLI's errors and plain answers, in process (click's
runner) against PostgreSQL.

A dead store, a missing database or a schema never migrated is one line and exit 3; the
hint repeats the ``-A`` the operator typed; the commands read naturally ("1 entry") and
say plainly what they cannot do (breakers without Redis).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from types import SimpleNamespace

import click
import pytest
from celery import Celery
from celery.bin.celery import celery as celery_command
from click.testing import CliRunner, Result
from sqlalchemy import make_url

from celery_reliable import Reliable
from celery_reliable.cli import reliable as reliable_group
from celery_reliable.dead_letters import FailedMessage
from celery_reliable.testing import drop_store
from tests.support import make_app, require, unique


def invoke(app: Celery, *args: str) -> Result:
    return CliRunner().invoke(reliable_group, list(args), obj=SimpleNamespace(app=app))


def assert_one_line_error(result: Result, code: int, *fragments: str) -> str:
    """The command failed with ``code`` and a single line of error naming ``fragments``
    (after click's usage text, for a mistyped command)."""
    assert result.exit_code == code, result.output
    assert not isinstance(result.exception, Exception) or isinstance(
        result.exception, SystemExit
    ), result.exception
    lines = result.stderr.strip().splitlines()
    if lines[0].startswith("Usage: "):
        lines = [line for line in lines if line.startswith("Error: ")]
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def _effect(*args: object) -> None:
    """The task the seeded rows name; never run here."""


@pytest.fixture
def postgres() -> str:
    return require("postgresql")


@pytest.fixture
def store(postgres: str) -> Iterator[Reliable]:
    """A migrated PostgreSQL store of its own (a table prefix), dropped afterwards."""
    prefix = unique("cli_")
    app = make_app("memory://", postgres, prefix)
    app.task(name="effect", shared=False)(_effect)
    ext = Reliable.of(app)
    ext.create_schema()
    try:
        yield ext
    finally:
        ext.database.engine.dispose()
        drop_store(postgres, prefix)


def dead_letter(ext: Reliable, message_id: str) -> int:
    message = FailedMessage(
        message_id=message_id, task_id=message_id, task_name="effect", args=[1], kwargs={}
    )
    return ext.dead_letters.add(message, "PoisonMessage", detail="seeded")


# -- a store that cannot answer -----------------------------------------------------------


def test_a_schema_never_migrated_is_one_line_naming_the_a_value_typed(postgres: str):
    result = CliRunner().invoke(
        celery_command, ["-A", "tests.integration.cli_app", "reliable", "dlq", "list"]
    )
    line = assert_one_line_error(result, 3, "schema revision none")
    # The app is named "shop"; the operator typed the module.
    assert "run `celery -A tests.integration.cli_app reliable db upgrade`" in line
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("command", "database"),
    [
        (("dlq", "stats"), "missing"),
        (("outbox", "list"), "missing"),
        (("inbox", "stats"), "unreachable"),
        (("db", "current"), "unreachable"),
    ],
)
def test_a_missing_or_unreachable_database_is_one_line(
    postgres: str, command: tuple[str, ...], database: str
):
    url = make_url(postgres)
    url = (
        url.set(database=unique("no_such_db_").rstrip("_"))
        if database == "missing"
        else url.set(host="127.0.0.1", port=1)  # nothing listens on port 1
    )
    app = make_app("memory://", url.render_as_string(hide_password=False), unique())
    result = invoke(app, *command)
    line = assert_one_line_error(result, 3, "is unreachable")
    assert ("does not exist" if database == "missing" else "OperationalError") in line
    assert "Traceback" not in result.output


def test_an_unreachable_redis_is_one_line_naming_the_setting(store: Reliable):
    """The breakers shared through ``reliable_redis_url``: that Redis down is named as such."""
    url = "redis://:secret@127.0.0.1:1/0"  # nothing listens on port 1
    app = make_app(
        "memory://",
        store.database.url.render_as_string(hide_password=False),
        store.settings.table_prefix,
        reliable_redis_url=url,
    )
    Reliable.of(app).breakers.configure("payments", failure_threshold=1, reset_timeout=60)
    line = assert_one_line_error(invoke(app, "breakers"), 3, "ConnectionError")
    assert line.startswith("Error: Redis at reliable_redis_url redis://:***@127.0.0.1:1/0 ")
    assert "secret" not in line


def test_a_misspelled_setting_says_which_one_was_meant(postgres: str):
    app = make_app("memory://", postgres, unique(), reliable_max_atempts=3)
    result = invoke(app, "dlq", "stats")
    assert_one_line_error(result, 2, "did you mean 'reliable_max_attempts'?")


# -- plain answers --------------------------------------------------------------------------


def test_health_without_a_flag_runs_both_probes(store: Reliable):
    table = invoke(store.app, "health")
    assert table.exit_code in (0, 1), table.output
    assert {"ready:", "live:"} <= {line.split()[0] for line in table.stdout.splitlines()}
    data = json.loads(invoke(store.app, "health", "--json").stdout)
    assert set(data) == {"ready", "live"}
    assert {c["name"] for c in data["ready"]["checks"]} >= {"store", "broker"}


def test_every_command_that_prints_data_takes_json():
    def leaves(group: click.Group, path: str) -> Iterator[tuple[str, click.Command]]:
        for name, command in group.commands.items():
            if isinstance(command, click.Group):
                yield from leaves(command, f"{path}{name} ")
            else:
                yield f"{path}{name}", command

    # Commands that run a process, or change the schema and print one line about it.
    no_data = {"relay", "flower", "db upgrade"}
    without = [
        path
        for path, command in leaves(reliable_group, "")
        if path not in no_data and "--json" not in {o for p in command.params for o in p.opts}
    ]
    assert without == []


def test_json_on_the_commands_that_act(store: Reliable):
    first = dead_letter(store, "m-1")
    dry = json.loads(
        invoke(
            store.app, "dlq", "replay", "--reason", "PoisonMessage", "--dry-run", "--json"
        ).stdout
    )
    assert dry == {"would_replay": 1}
    replayed = json.loads(invoke(store.app, "dlq", "replay", str(first), "--json").stdout)
    assert replayed["replayed"] == 1
    assert list(replayed["task_ids"]) == [str(first)]
    purged = json.loads(invoke(store.app, "dlq", "purge", "--older-than", "1d", "--json").stdout)
    assert purged == {"purged": 0}
    current = json.loads(invoke(store.app, "db", "current", "--json").stdout)
    assert current["up_to_date"] is True
    assert current["revision"] == current["head"]


def test_counts_read_naturally(store: Reliable):
    empty = invoke(store.app, "dlq", "stats")
    assert empty.stdout == "messages: 0\nentries: 0\noldest: -\n"  # no three bare "(none)"
    dead_letter(store, "m-1")
    dry = invoke(store.app, "dlq", "replay", "--reason", "PoisonMessage", "--dry-run")
    assert dry.stdout.strip() == "would replay 1 entry"
    dead_letter(store, "m-2")
    dry = invoke(store.app, "dlq", "replay", "--reason", "PoisonMessage", "--dry-run")
    assert dry.stdout.strip() == "would replay 2 entries"
    dead_letter(store, "m-2")  # its replay failed again: a second entry, the same message
    stats = invoke(store.app, "dlq", "stats").stdout
    assert stats.splitlines()[:2] == ["messages: 2", "entries: 3"]
    oldest = next(line for line in stats.splitlines() if line.startswith("oldest: "))
    assert oldest.endswith(" s"), oldest  # such as "oldest: 0.1 s"
    counts = json.loads(invoke(store.app, "dlq", "stats", "--json").stdout)
    assert (counts["messages"], counts["count"]) == (2, 3)


def test_inbox_list_lists_by_state(store: Reliable):
    done = store.inbox.claim("m-done", "effect", task_name="effect", owner="test")
    store.inbox.complete(done)
    bad = store.inbox.claim("m-bad", "effect", task_name="effect", owner="test")
    store.inbox.quarantine(bad, "seeded")

    def listed(*args: str) -> list[str]:
        result = invoke(store.app, "inbox", "list", *args, "--json")
        assert result.exit_code == 0, result.output
        return [row["message_id"] for row in json.loads(result.stdout)]

    assert listed() == ["m-bad"]  # no flag: the quarantined ones
    assert listed("--poisoned") == ["m-bad"]
    assert listed("--state", "completed") == ["m-done"]
    assert listed("--state", "failed") == []
    both = invoke(store.app, "inbox", "list", "--poisoned", "--state", "completed")
    assert_one_line_error(both, 2, "not both")


def test_breakers_without_redis_say_the_state_is_per_process(store: Reliable):
    store.breakers.configure("payments", failure_threshold=1, reset_timeout=60)
    listed = invoke(store.app, "breakers")
    assert listed.exit_code == 0, listed.output
    assert "cannot be seen or reset from the command line" in listed.stderr
    assert "payments  unknown (per process)" in listed.stdout
    assert json.loads(invoke(store.app, "breakers", "--json").stdout) == {
        "payments": "unknown (per process)"
    }
    reset = invoke(store.app, "breakers", "--reset", "payments")
    assert_one_line_error(reset, 1, "circuit breaker payments not reset")
    assert reset.stdout == ""  # nothing claims it was closed
    typo = invoke(store.app, "breakers", "--reset", "paymnets")
    assert_one_line_error(typo, 2, "no circuit breaker named 'paymnets' (the app has: payments)")


def test_the_relay_logs_each_batch_at_info(store: Reliable, caplog: pytest.LogCaptureFixture):
    from sqlalchemy.orm import Session

    with Session(store.database.engine) as session, session.begin():
        store.outbox.enqueue(session, store.app.signature("effect", (1,)), message_id="r-1")
    with caplog.at_level(logging.INFO, logger="celery_reliable.relay"):
        result = invoke(store.app, "relay", "--once", "--loglevel", "info")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "relayed 1 message"
    batches = [r.getMessage() for r in caplog.records if "relay batch" in r.getMessage()]
    assert len(batches) == 1
    assert batches[0].startswith("relay batch: 1 of 1 published in ")
    assert "/s), the oldest waited " in batches[0]
    bad = invoke(store.app, "relay", "--once", "--loglevel", "loud")
    assert bad.exit_code == 2
