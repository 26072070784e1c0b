"""`celery -A app reliable outbox|inbox|cleanup|recover-stuck ...` as an operator runs them
(in process, see ``Cli``)."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import insert

from celery_reliable import Reliable


@pytest.fixture
def store(cli):
    """A migrated store with one pending and one poisoned outbox row, and inbox marks."""
    app = cli.app()
    reliable = Reliable.of(app)
    reliable.create_schema()
    rows = []
    for n, status in ((1, "pending"), (2, "poisoned")):
        row = reliable.outbox.build_row(app.tasks["effect"].s(), f"m-{n}", None, None, None, {})
        row.update(status=status, last_error="NOT_FOUND - no exchange" if n == 2 else None)
        rows.append(row)
    with reliable.database.engine.begin() as conn:
        conn.execute(insert(reliable.tables.outbox), rows)
    reliable.inbox.complete(reliable.inbox.claim("ok", "effect", task_name="effect", owner="w"))
    dead = reliable.inbox.claim("dead", "effect", task_name="effect", owner="w")
    reliable.inbox.quarantine(dead, "crashed its worker 10 times")
    yield reliable
    reliable.database.dispose()


@pytest.fixture
def run(cli):
    """``celery reliable ARGS`` -> (exit code, stdout, stderr)."""

    def run(*args):
        result = cli(*args)
        return result.exit_code, result.stdout, result.stderr

    return run


def test_outbox_stats_list_and_retry(run, store):
    code, out, _ = run("outbox", "stats", "--json")
    assert code == 0
    stats = json.loads(out)
    assert (stats["due"], stats["poisoned"]) == (1, 1)
    code, out, _ = run("outbox", "list", "--poisoned")
    assert code == 0
    assert "NOT_FOUND - no exchange" in out
    poisoned_id = store.admin.outbox_rows(poisoned=True)[0]["id"]
    code, out, err = run("outbox", "retry", str(poisoned_id), "999999")
    assert code == 2
    assert "999999" in err  # all or nothing: the good id was not retried either
    assert store.admin.outbox_stats().poisoned == 1
    code, out, _ = run("outbox", "retry", str(poisoned_id))
    assert (code, out.strip()) == (0, "1 outbox row will be published again")
    assert store.admin.outbox_stats().due == 2


def test_inbox_stats_list_and_retry(run, store):
    code, out, _ = run("inbox", "stats", "--json")
    assert json.loads(out) == {"processing": 0, "failed": 0, "completed": 1, "poisoned": 1}
    code, out, _ = run("inbox", "list", "--poisoned")
    assert "crashed its worker 10 times" in out
    code, _, err = run("inbox", "retry", "ok")
    assert code == 2
    assert "not quarantined in the inbox: ok" in err
    code, out, _ = run("inbox", "retry", "dead")
    assert (code, out.strip()) == (0, "1 inbox mark will run again on the next delivery")
    assert store.admin.inbox_stats()["poisoned"] == 0


def test_cleanup_and_recover_stuck(run, store):
    code, out, _ = run("cleanup", "--dry-run", "--json")
    assert code == 0
    assert json.loads(out) == {
        "skipped": False,
        "counts": {
            "outbox_sent": 0,
            "inbox_completed": 0,
            "inbox_orphaned_messages": 0,
            "dead_letters": 0,
        },
    }
    code, out, _ = run("cleanup")
    assert code == 0
    assert "outbox_sent" in out
    code, out, _ = run("recover-stuck", "--json")
    assert code == 0
    assert json.loads(out)["counts"] == {"outbox_released": 0, "inbox_recovered": 0}
