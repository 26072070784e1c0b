"""Retention cleanup, stuck recovery and the operator's outbox/inbox view, on each database."""

from __future__ import annotations

import pickle
from datetime import timedelta

import pytest
from sqlalchemy import func, insert, select, update

from celery_reliable import InvalidArgument, Reliable
from celery_reliable.clock import utcnow
from celery_reliable.dead_letters import FailedMessage
from celery_reliable.schedule import CLEANUP_TASK, RECOVER_TASK, SettingSchedule
from celery_reliable.store.base import Status
from tests.support import make_app

OLD = timedelta(days=60)


@pytest.fixture
def reliable(db_url, table_prefix):
    app = make_app("memory://", db_url, table_prefix, reliable_cleanup_batch_size=2)
    reliable = Reliable.of(app)
    reliable.create_schema()

    @app.task(name="shop.ship", shared=False)
    def ship(order):
        return order

    yield reliable
    reliable.database.dispose()


def outbox_row(reliable, n, status, *, age=timedelta(0), claimed_age=None):
    now = utcnow()
    row = reliable.outbox.build_row(
        reliable.app.tasks["shop.ship"].s(n), f"m-{n}", None, None, None, {}
    )
    row.update(status=status, created_at=now - age, available_at=now - age)
    if status == "sent":
        row["sent_at"] = now - age
    if claimed_age is not None:
        row.update(claim_token="dead-relay", claimed_at=now - claimed_age)
    with reliable.database.engine.begin() as conn:
        return conn.execute(insert(reliable.tables.outbox).values(row)).inserted_primary_key[0]


def inbox_mark(reliable, message_id, status, *, age=timedelta(0)):
    claim = reliable.inbox.claim(message_id, "shop.ship", task_name="shop.ship", owner="w")
    if status is Status.COMPLETED:
        reliable.inbox.complete(claim, "done")
    elif status is Status.POISONED:
        reliable.inbox.quarantine(claim, "dead")
    t = reliable.tables.inbox_status
    with reliable.database.engine.begin() as conn:
        conn.execute(
            update(t)
            .where(t.c.message_id == message_id)
            .values(completed_at=utcnow() - age, processing_started_at=utcnow() - age)
        )
        m = reliable.tables.inbox_message
        conn.execute(
            update(m).where(m.c.message_id == message_id).values(first_seen_at=utcnow() - age)
        )
    return claim


def count(reliable, table, *where):
    with reliable.database.engine.connect() as conn:
        return conn.scalar(select(func.count()).select_from(table).where(*where))


def test_cleanup_deletes_only_what_is_past_retention_and_never_poisoned_rows(reliable):
    tables = reliable.tables
    for n in range(5):
        outbox_row(reliable, n, "sent", age=OLD)
    outbox_row(reliable, 10, "sent")  # recent
    outbox_row(reliable, 11, "pending", age=OLD)
    outbox_row(reliable, 12, "poisoned", age=OLD)
    for n in range(3):
        inbox_mark(reliable, f"done-{n}", Status.COMPLETED, age=OLD)
    inbox_mark(reliable, "done-recent", Status.COMPLETED)
    inbox_mark(reliable, "dead", Status.POISONED, age=OLD)
    for n in range(3):
        entry = reliable.dead_letters.add(
            FailedMessage(message_id=f"d-{n}", task_id=None, task_name="shop.ship", args=[]),
            "PoisonMessage",
            detail="x",
        )
        with reliable.database.engine.begin() as conn:
            dl = tables.dead_letter
            stale = update(dl).where(dl.c.id == entry).values(dead_lettered_at=utcnow() - OLD)
            conn.execute(stale)

    dry = reliable.maintenance.cleanup(dry_run=True)
    expected = {
        "outbox_sent": 5,
        "inbox_completed": 3,
        "inbox_orphaned_messages": 0,  # their status rows still exist
        "dead_letters": 3,
    }
    assert dry.counts == expected
    assert count(reliable, tables.outbox) == 8  # a dry run deletes nothing

    done = reliable.maintenance.cleanup(locked=False)
    # Marks go first, so their messages are orphans by the time that step runs.
    assert done.counts == {**expected, "inbox_orphaned_messages": 3}
    assert count(reliable, tables.outbox) == 3
    assert sorted(
        reliable.inbox.store.get_status(m, "shop.ship").status.value
        for m in ("done-recent", "dead")
    ) == ["completed", "poisoned"]
    assert count(reliable, tables.inbox_message) == 2
    assert reliable.maintenance.cleanup(locked=False).total == 0
    assert reliable.dead_letters.count() == 0


def test_recovery_releases_dead_claims_and_a_slow_run_can_still_complete(reliable):
    stuck_row = outbox_row(reliable, 1, "pending", claimed_age=timedelta(hours=1))
    live_row = outbox_row(reliable, 2, "pending", claimed_age=timedelta(seconds=1))
    slow = inbox_mark(reliable, "slow", Status.PROCESSING, age=timedelta(hours=1))
    inbox_mark(reliable, "fresh", Status.PROCESSING)

    report = reliable.maintenance.recover_stuck(locked=False)
    assert report.counts == {"outbox_released": 1, "inbox_recovered": 1}
    outbox = reliable.tables.outbox
    with reliable.database.engine.connect() as conn:
        tokens = dict(conn.execute(select(outbox.c.id, outbox.c.claim_token)).all())
    assert tokens == {stuck_row: None, live_row: "dead-relay"}
    assert reliable.store.get_status("slow", "shop.ship").status is Status.FAILED
    assert reliable.store.get_status("fresh", "shop.ship").status is Status.PROCESSING
    reliable.inbox.complete(slow, "late but fine")  # same version: the slow run still counts
    assert reliable.store.get_status("slow", "shop.ship").status is Status.COMPLETED


def test_sent_messages_no_inbox_saw_are_published_again(reliable):
    from celery_reliable import ReliableTask

    @reliable.app.task(base=ReliableTask, name="shop.pay", shared=False)
    def pay():
        return None

    lost = outbox_row(reliable, 1, "sent", age=timedelta(minutes=30))
    with reliable.database.engine.begin() as conn:  # a ReliableTask message, never seen
        t = reliable.tables.outbox
        conn.execute(update(t).where(t.c.id == lost).values(task_name="shop.pay"))
    seen = outbox_row(reliable, 2, "sent", age=timedelta(minutes=30))
    inbox_mark(reliable, "m-2", Status.COMPLETED)  # its inbox saw it
    plain = outbox_row(reliable, 3, "sent", age=timedelta(minutes=30))  # not a ReliableTask
    with reliable.database.engine.begin() as conn:
        conn.execute(update(t).where(t.c.id == seen).values(task_name="shop.pay"))
    recent = outbox_row(reliable, 4, "sent")
    with reliable.database.engine.begin() as conn:
        conn.execute(update(t).where(t.c.id == recent).values(task_name="shop.pay"))

    assert "outbox_redelivered" not in reliable.maintenance.recover_stuck(locked=False).counts
    report = reliable.maintenance.recover_stuck(
        locked=False, redeliver_unseen_after=timedelta(minutes=10)
    )
    assert report.counts["outbox_redelivered"] == 1
    with reliable.database.engine.connect() as conn:
        statuses = dict(conn.execute(select(t.c.id, t.c.status)).all())
    assert statuses == {lost: "pending", seen: "sent", plain: "sent", recent: "sent"}
    assert reliable.relay.drain() == 1  # and the relay sends it again


def test_outbox_stats_list_and_manual_retry(reliable):
    outbox_row(reliable, 1, "pending", age=timedelta(minutes=5))
    poisoned = outbox_row(reliable, 2, "poisoned")
    outbox_row(reliable, 3, "sent")
    admin = reliable.admin
    stats = admin.outbox_stats()
    assert (stats.due, stats.delayed, stats.sent, stats.poisoned) == (1, 0, 1, 1)
    assert timedelta(minutes=4) < stats.oldest_due_age < timedelta(minutes=6)
    assert [r["id"] for r in admin.outbox_rows(poisoned=True)] == [poisoned]
    with pytest.raises(InvalidArgument, match="not poisoned outbox rows: 999"):
        admin.retry_outbox([poisoned, 999])
    assert admin.outbox_stats().poisoned == 1  # all or nothing
    assert admin.retry_outbox([poisoned]) == 1
    assert admin.outbox_stats().due == 2


def test_inbox_stats_list_and_manual_retry(reliable):
    inbox_mark(reliable, "ok", Status.COMPLETED)
    inbox_mark(reliable, "bad", Status.POISONED)
    admin = reliable.admin
    assert admin.inbox_stats() == {"processing": 0, "failed": 0, "completed": 1, "poisoned": 1}
    assert [r["message_id"] for r in admin.inbox_marks(Status.POISONED)] == ["bad"]
    with pytest.raises(InvalidArgument, match="not quarantined in the inbox: ok"):
        admin.retry_inbox(["bad", "ok"])
    assert admin.retry_inbox(["bad"]) == 1
    row = reliable.store.get_status("bad", "shop.ship")
    assert (row.status, row.attempts) == (Status.FAILED, 0)


def test_beat_entries_follow_the_settings(reliable):
    schedule = reliable.app.conf.beat_schedule
    assert {schedule[CLEANUP_TASK]["task"], schedule[RECOVER_TASK]["task"]} == {
        CLEANUP_TASK,
        RECOVER_TASK,
    }
    every = SettingSchedule("recovery_interval", app=reliable.app)
    created = utcnow()  # a new beat entry's last run defaults to its creation
    first = every.is_due(created)
    assert first.is_due  # the first look does not wait a full interval
    assert first.next == 60
    # Beat asks once while building its heap, and again when the entry comes up: it is
    # still due then, since it has not run (before, the first question used the start up).
    assert every.is_due(created).is_due
    assert not every.is_due(utcnow()).is_due  # it ran: now it waits its interval
    restored = pickle.loads(pickle.dumps(every))  # beat's shelve: no app object survives
    assert restored == every
    # It finds its app's settings by name (60 s), and remembers it ran in this process.
    assert restored.is_due(utcnow()).next == pytest.approx(60, abs=1)


def test_a_switched_off_entry_is_never_due(db_url, table_prefix):
    app = make_app(
        "memory://",
        db_url,
        table_prefix,
        reliable_cleanup_interval=None,
        reliable_maintenance_first_run_waits=True,
        reliable_recovery_interval="10m",
    )
    assert not SettingSchedule("cleanup_interval", app=app).is_due(utcnow() - OLD).is_due
    waits = SettingSchedule("recovery_interval", app=app)
    assert not waits.is_due(utcnow()).is_due
    assert waits.is_due(utcnow() - timedelta(minutes=11)).is_due
    Reliable.of(app).database.dispose()


def test_lock_names_come_from_the_app_and_store_unless_a_namespace_is_set(db_url, table_prefix):
    app = make_app("memory://", db_url, table_prefix)
    assert Reliable.of(app).maintenance.lock_name("cleanup") == f"{app.main}:{table_prefix}:cleanup"
    shared = make_app("memory://", db_url, table_prefix, reliable_lock_namespace="billing")
    assert Reliable.of(shared).maintenance.lock_name("cleanup") == "billing:cleanup"


def reliable_outbox_row(reliable, n, *, sent_age):
    """A sent outbox row for the ReliableTask ``shop.pay``, sent (and created) ``sent_age`` ago."""
    row = outbox_row(reliable, n, "sent", age=sent_age)
    t = reliable.tables.outbox
    with reliable.database.engine.begin() as conn:
        conn.execute(update(t).where(t.c.id == row).values(task_name="shop.pay"))
    return row


def send_again(reliable, row, age):
    """What the relay did to a redelivered row, then ``age`` of silence from every inbox."""
    assert reliable.relay.drain() == 1
    t = reliable.tables.outbox
    with reliable.database.engine.begin() as conn:
        conn.execute(update(t).where(t.c.id == row).values(sent_at=utcnow() - age))


@pytest.fixture
def redelivering(db_url, table_prefix):
    """An app whose stuck recovery publishes unseen messages again after 10 minutes."""
    from celery_reliable import ReliableTask

    app = make_app(
        "memory://",
        db_url,
        table_prefix,
        reliable_inbox_retention="1d",
        reliable_outbox_retention="7d",
        reliable_outbox_redeliver_unseen_after="10m",
        reliable_outbox_max_redeliveries=2,
    )
    reliable = Reliable.of(app)
    reliable.create_schema()
    app.task(name="shop.ship", shared=False)(_ship)
    app.task(base=ReliableTask, name="shop.pay", shared=False)(_pay)
    yield reliable
    reliable.database.dispose()


def _ship(order):
    return order


def _pay():
    return None


def test_redelivery_never_repeats_a_message_whose_inbox_mark_retention_deleted(redelivering):
    reliable = redelivering
    done = reliable_outbox_row(reliable, 1, sent_age=timedelta(days=2))
    inbox_mark(reliable, "m-1", Status.COMPLETED, age=timedelta(days=2))  # it ran, long ago
    lost = reliable_outbox_row(reliable, 2, sent_age=timedelta(minutes=30))  # never seen
    assert reliable.maintenance.cleanup(locked=False).counts["inbox_completed"] == 1
    assert reliable.store.get_status("m-1", "shop.pay") is None  # the mark is gone...

    report = reliable.maintenance.recover_stuck(locked=False)
    # ...yet its message is not sent again: no inbox could recognise the copy as a duplicate.
    assert report.counts["outbox_redelivered"] == 1
    t = reliable.tables.outbox
    with reliable.database.engine.connect() as conn:
        statuses = dict(conn.execute(select(t.c.id, t.c.status)).all())
    assert statuses == {done: "sent", lost: "pending"}


def test_redelivery_skips_dead_lettered_messages_and_gives_up_after_the_cap(redelivering):
    reliable = redelivering
    expired = reliable_outbox_row(reliable, 1, sent_age=timedelta(minutes=30))
    reliable.dead_letters.add(  # the worker refused it: no inbox will ever record it
        FailedMessage(message_id="m-1", task_id=None, task_name="shop.pay", args=[]),
        "MessageExpired",
        detail="expired",
    )
    unheard = reliable_outbox_row(reliable, 2, sent_age=timedelta(minutes=30))

    recover = reliable.maintenance.recover_stuck
    assert recover(locked=False).counts["outbox_redelivered"] == 1  # only the unheard one
    send_again(reliable, unheard, timedelta(minutes=30))
    assert recover(locked=False).counts["outbox_redelivered"] == 1  # its second and last
    send_again(reliable, unheard, timedelta(minutes=30))
    assert recover(locked=False).counts["outbox_redelivered"] == 0  # the cap: 2
    assert reliable.dead_letters.count() == 1  # no new dead letter per cycle either

    t = reliable.tables.outbox
    with reliable.database.engine.connect() as conn:
        rows = {r.id: r for r in conn.execute(select(t))}
    assert (rows[expired].status, rows[expired].redeliveries) == ("sent", 0)
    assert (rows[unheard].status, rows[unheard].redeliveries) == ("sent", 2)
