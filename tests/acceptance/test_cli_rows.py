"""`celery -A app reliable outbox|inbox ...` run as an operator runs them."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import insert

from celery_reliable import Reliable
from tests.support import make_app

from .conftest import _declared_elsewhere, celery


@pytest.fixture
def store(env):
    """A migrated store with one pending and one poisoned outbox row, and inbox marks."""
    app = make_app("memory://", env["RT_DB"], env["RT_PREFIX"])
    app.task(name="effect", shared=False)(_declared_elsewhere)
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


def run(env, *args):
    result = celery(env, "reliable", *args)
    return result.returncode, result.stdout, result.stderr


def test_outbox_stats_list_and_retry(env, store):
    code, out, _ = run(env, "outbox", "stats", "--json")
    assert code == 0
    stats = json.loads(out)
    assert (stats["due"], stats["poisoned"]) == (1, 1)
    code, out, _ = run(env, "outbox", "list", "--poisoned")
    assert code == 0
    assert "NOT_FOUND - no exchange" in out
    poisoned_id = store.admin.outbox_rows(poisoned=True)[0]["id"]
    code, out, err = run(env, "outbox", "retry", str(poisoned_id), "999999")
    assert code == 2
    assert "999999" in err  # all or nothing: the good id was not retried either
    assert store.admin.outbox_stats().poisoned == 1
    code, out, _ = run(env, "outbox", "retry", str(poisoned_id))
    assert (code, out.strip()) == (0, "1 outbox row will be published again")
    assert store.admin.outbox_stats().due == 2


def test_inbox_stats_list_and_retry(env, store):
    code, out, _ = run(env, "inbox", "stats", "--json")
    assert json.loads(out) == {"processing": 0, "failed": 0, "completed": 1, "poisoned": 1}
    code, out, _ = run(env, "inbox", "list", "--poisoned")
    assert "crashed its worker 10 times" in out
    code, _, err = run(env, "inbox", "retry", "ok")
    assert code == 2
    assert "not quarantined in the inbox: ok" in err
    code, out, _ = run(env, "inbox", "retry", "dead")
    assert (code, out.strip()) == (0, "1 inbox mark will run again on the next delivery")
    assert store.admin.inbox_stats()["poisoned"] == 0


def test_cleanup_and_recover_stuck(env, store):
    code, out, _ = run(env, "cleanup", "--dry-run", "--json")
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
    code, out, _ = run(env, "cleanup")
    assert code == 0
    assert "outbox_sent" in out
    code, out, _ = run(env, "recover-stuck", "--json")
    assert code == 0
    assert json.loads(out)["counts"] == {"outbox_released": 0, "inbox_recovered": 0}
