"""`celery -A app reliable dlq ...` as an operator runs it (in process, see ``Cli``)."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from celery_reliable import Reliable
from celery_reliable.dead_letters import FailedMessage


@pytest.fixture
def letters(cli):
    """The dead-letter store the CLI will see, filled with three entries."""
    reliable = Reliable.of(cli.app())
    reliable.create_schema()
    dl = reliable.dead_letters
    for n, reason in ((1, "MaxRetriesExceeded"), (2, "PoisonMessage"), (3, "PoisonMessage")):
        message = FailedMessage(
            message_id=f"order-{n}", task_id=f"t-{n}", task_name="effect", args=[], kwargs={}
        )
        dl.add(message, reason, detail=f"failure {n}")
    yield reliable
    reliable.database.dispose()


@pytest.fixture
def dlq(cli):
    """``celery reliable dlq ARGS``."""
    return lambda *args: cli("dlq", *args)


def test_list_show_and_stats(dlq, letters):
    listed = dlq("list", "--reason", "PoisonMessage", "--json")
    assert listed.exit_code == 0, listed.stderr
    assert [e["message_id"] for e in json.loads(listed.stdout)] == ["order-3", "order-2"]
    table = dlq("list")
    assert table.stdout.splitlines()[0].split()[:3] == ["ID", "DEAD-LETTERED", "REASON"]
    assert len(table.stdout.splitlines()) == 4
    entry_id = json.loads(listed.stdout)[0]["id"]
    shown = dlq("show", str(entry_id))
    assert "order-3" in shown.stdout
    assert "failure 3" in shown.stdout
    stats = json.loads(dlq("stats", "--json").stdout)
    assert stats["count"] == 3
    assert stats["by_reason"] == {"MaxRetriesExceeded": 1, "PoisonMessage": 2}


def test_replay_by_id_and_by_reason(dlq, letters):
    first = letters.dead_letters.list(reason="MaxRetriesExceeded")[0]
    replayed = dlq("replay", str(first.id))
    assert replayed.exit_code == 0, replayed.stderr
    assert f"entry {first.id} replayed as task" in replayed.stdout
    assert dlq("replay", "--reason", "PoisonMessage", "--dry-run").stdout.strip() == (
        "would replay 2 entries"
    )
    assert letters.dead_letters.count(replayed=True) == 1
    assert dlq("replay", "--reason", "PoisonMessage").stdout.strip() == "replayed 2 entries"
    with letters.database.engine.connect() as conn:
        rows = conn.execute(select(letters.tables.outbox.c.message_id)).scalars().all()
    assert sorted(rows) == ["order-1", "order-2", "order-3"]


@pytest.mark.parametrize(
    "args",
    [
        ("replay", "999999"),
        ("replay",),
        ("replay", "1", "--reason", "PoisonMessage"),
        ("list", "--reason", "Bogus"),
        ("list", "--since", "last tuesday"),
        ("purge", "--older-than", "soon"),
        ("show", "999999"),
    ],
)
def test_bad_arguments_are_one_line_exit_2_and_change_nothing(dlq, letters, args):
    result = dlq(*args)
    assert result.exit_code == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert letters.dead_letters.count(replayed=False) == 3


def test_purge(dlq, letters):
    assert dlq("purge", "--older-than", "1d", "--dry-run").stdout.strip() == (
        "would purge 0 entries"
    )
    assert dlq("purge", "--older-than", "1d").stdout.strip() == "purged 0 entries"
    assert letters.dead_letters.count() == 3
