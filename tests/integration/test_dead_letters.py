"""The dead-letter store's API on each database: record, query, statistics, replay, purge."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from celery_reliable import DeadLetterNotFound, DeadLetterReason, InvalidArgument, Reliable
from celery_reliable.clock import utcnow
from celery_reliable.dead_letters import FailedMessage
from celery_reliable.signals import dead_letter_alert
from tests.support import make_app


@pytest.fixture
def reliable(db_url, table_prefix):
    app = make_app("memory://", db_url, table_prefix, reliable_alert_threshold=2)
    reliable = Reliable.of(app)
    reliable.create_schema()

    @app.task(name="shop.charge", shared=False)
    def charge(amount, currency="EUR"):
        return amount

    yield reliable
    reliable.database.dispose()


def message(n: int, task: str = "shop.charge", **fields) -> FailedMessage:
    return FailedMessage(
        message_id=f"order-{n}",
        task_id=f"task-{n}",
        task_name=task,
        handler_key=task,
        args=[n],
        kwargs={"currency": "EUR"},
        headers={"tenant": "acme", "id": f"task-{n}", "reliable_deferrals": 2},
        delivery_info={"exchange": "", "routing_key": "celery"},
        attempts=3,
        hostname="worker@host",
        **fields,
    )


def fail(text: str) -> ValueError:
    try:
        raise ValueError(text)
    except ValueError as exc:
        return exc


def test_an_entry_keeps_what_replay_and_review_need(reliable):
    dl = reliable.dead_letters
    entry_id = dl.add(message(1), DeadLetterReason.MAX_RETRIES_EXCEEDED, exc=fail("boom"))
    entry = dl.get(entry_id)
    assert (entry.message_id, entry.task_name, entry.args, entry.kwargs) == (
        "order-1",
        "shop.charge",
        [1],
        {"currency": "EUR"},
    )
    assert (entry.reason, entry.exception_type, entry.exception_message) == (
        "MaxRetriesExceeded",
        "ValueError",
        "boom",
    )
    assert "ValueError: boom" in entry.traceback
    assert entry.failure_group == "ValueError @ test_dead_letters.py:fail"
    assert (entry.attempts, entry.hostname, entry.replay_count) == (3, "worker@host", 0)
    assert entry.as_dict()["reason"] == "MaxRetriesExceeded"
    assert dl.get(entry_id + 1000) is None


def test_list_filters_and_pages_newest_first(reliable):
    dl = reliable.dead_letters
    ids = [
        dl.add(message(1), "MaxRetriesExceeded", detail="x"),
        dl.add(message(2, task="shop.ship"), "PoisonMessage", detail="y"),
        dl.add(message(3), "PoisonMessage", detail="z"),
    ]
    assert [e.id for e in dl.list()] == ids[::-1]
    assert [e.id for e in dl.list(reason=DeadLetterReason.POISON_MESSAGE)] == [ids[2], ids[1]]
    assert [e.id for e in dl.list(reason="PoisonMessage", task_name="shop.charge")] == [ids[2]]
    assert [e.id for e in dl.list(limit=1, offset=1)] == [ids[1]]
    assert dl.list(since=utcnow() + timedelta(minutes=1)) == []
    assert len(dl.list(until=utcnow() + timedelta(minutes=1))) == 3
    assert dl.count() == 3
    assert dl.count(reason="PoisonMessage") == 2
    assert dl.count(replayed=True) == 0
    assert dl.count(replayed=False) == 3


@pytest.mark.parametrize(
    "call",
    [
        lambda dl: dl.list(reason="Nope"),
        lambda dl: dl.list(limit=-1),
        lambda dl: dl.list(since=utcnow().replace(tzinfo=None)),
        lambda dl: dl.count(until="yesterday"),
        lambda dl: dl.purge_older_than("forever"),
        lambda dl: dl.replay_batch(rate_limit=0),
    ],
)
def test_bad_arguments_get_a_clear_error(reliable, call):
    with pytest.raises(InvalidArgument):
        call(reliable.dead_letters)


def test_statistics(reliable):
    dl = reliable.dead_letters
    assert dl.statistics().count == 0
    assert dl.statistics().oldest_age is None
    dl.add(message(1), "MaxRetriesExceeded", exc=fail("a"))
    dl.add(message(2), "MaxRetriesExceeded", exc=fail("b"))
    dl.add(message(3, task="shop.ship"), "HandlerNotFound", detail="unknown task")
    stats = dl.statistics()
    assert stats.count == 3
    assert stats.messages == 3
    assert stats.by_reason == {"MaxRetriesExceeded": 2, "HandlerNotFound": 1}
    assert stats.by_task == {"shop.charge": 2, "shop.ship": 1}
    assert stats.by_failure_group == {
        "ValueError @ test_dead_letters.py:fail": 2,
        "HandlerNotFound": 1,
    }
    assert timedelta(0) <= stats.oldest_age < timedelta(minutes=1)
    assert stats.as_dict()["count"] == 3


def test_replay_writes_the_message_to_the_outbox_and_lifts_the_quarantine(reliable):
    dl = reliable.dead_letters
    claim = reliable.inbox.claim("order-1", "shop.charge", task_name="shop.charge", owner="w")
    reliable.inbox.quarantine(claim, "dead")
    entry_id = dl.add(message(1), "MaxRetriesExceeded", detail="x")
    task_id = dl.replay(entry_id)
    outbox = reliable.tables.outbox
    with reliable.database.engine.connect() as conn:
        row = conn.execute(select(outbox)).one()
    assert (row.message_id, row.task_id, row.task_name) == ("order-1", task_id, "shop.charge")
    headers = reliable.inbox.decode_result(row.headers)
    assert headers["tenant"] == "acme"
    assert headers["reliable_message_id"] == "order-1"
    assert "reliable_deferrals" not in headers  # bookkeeping of the failed run is dropped
    status = reliable.store.get_status("order-1", "shop.charge")
    assert (status.status.value, status.attempts) == ("failed", 0)
    entry = dl.get(entry_id)
    assert entry.replay_count == 1
    assert entry.replayed_at is not None
    with pytest.raises(DeadLetterNotFound):
        dl.replay(entry_id + 1000)


def test_a_failed_replay_changes_nothing(reliable):
    dl = reliable.dead_letters
    entry_id = dl.add(message(1), "MaxRetriesExceeded", detail="x")
    with pytest.raises(InvalidArgument, match="transform must return a signature"):
        dl.replay(entry_id, transform=lambda sig: None)
    assert dl.get(entry_id).replay_count == 0
    with reliable.database.engine.connect() as conn:
        assert conn.execute(select(reliable.tables.outbox)).first() is None


def test_replay_batch_dry_run_limit_transform_and_stop_after_failures(reliable):
    dl = reliable.dead_letters
    for n in range(1, 5):
        dl.add(message(n), "MaxRetriesExceeded", detail="x")
    dl.add(message(9, task="shop.gone"), "HandlerNotFound", detail="x")
    assert dl.replay_batch(dry_run=True) == 5
    assert dl.count(replayed=True) == 0
    assert dl.replay_batch(reason="MaxRetriesExceeded", limit=2) == 2

    def fix_currency(signature):
        return signature.clone(kwargs={"currency": "USD"})

    assert dl.replay_batch(reason="MaxRetriesExceeded", transform=fix_currency) == 2
    outbox = reliable.tables.outbox
    with reliable.database.engine.connect() as conn:
        rows = conn.execute(select(outbox.c.body).order_by(outbox.c.id)).scalars().all()
    assert [b"USD" in body for body in rows] == [False, False, True, True]
    # The entry for a task that no longer exists fails to replay; the batch stops.
    assert dl.replay_batch(stop_after_failures=1) == 0
    assert dl.count(replayed=False) == 1


def test_replay_batch_rate_limit_spaces_the_replays(reliable):
    dl = reliable.dead_letters
    for n in range(1, 4):
        dl.add(message(n), "MaxRetriesExceeded", detail="x")
    started = time.monotonic()
    assert dl.replay_batch(rate_limit=20) == 3
    elapsed = time.monotonic() - started
    # 20 per second: the three replays start 50 ms apart, so the batch takes at least
    # 100 ms. Only a lower bound: a loaded machine makes it slower, never faster. (Gaps
    # between the recorded replay times are not a bound: each replay takes its own time.)
    assert elapsed >= 0.1, elapsed
    assert all(e.replay_count == 1 for e in dl.list())


def test_purge_and_delete(reliable):
    dl = reliable.dead_letters
    old = dl.add(message(1), "MaxRetriesExceeded", detail="x")
    new = dl.add(message(2), "MaxRetriesExceeded", detail="x")
    table = reliable.tables.dead_letter
    with reliable.database.engine.begin() as conn:
        conn.execute(
            update(table)
            .where(table.c.id == old)
            .values(dead_lettered_at=utcnow() - timedelta(days=31))
        )
    assert dl.purge_older_than("30d") == 1
    assert dl.get(old) is None
    assert dl.get(new) is not None
    assert dl.delete(new) is True
    assert dl.delete(new) is False


def test_the_redaction_hook_masks_what_is_stored(reliable):
    dl = reliable.dead_letters

    def mask_card(fields):
        fields["kwargs"] = {**fields["kwargs"], "card": "****"}
        fields["exception_message"] = fields["exception_message"].replace("4111", "****")
        return fields

    dl.redactor = mask_card
    entry_id = dl.add(message(1), "MaxRetriesExceeded", exc=fail("card 4111 declined"))
    entry = dl.get(entry_id)
    assert entry.kwargs["card"] == "****"
    assert entry.exception_message == "card **** declined"


def test_more_dead_letters_than_the_threshold_send_one_alert_per_window(reliable):
    alerts = []

    def on_alert(sender=None, count=None, **kwargs):
        alerts.append(count)

    dead_letter_alert.connect(on_alert, weak=False)
    try:
        dl = reliable.dead_letters
        for n in range(1, 5):
            dl.add(message(n), "MaxRetriesExceeded", detail="x")
            dl.check_alert()
        assert alerts == [3]  # threshold 2: the third entry alerts, the fourth is the same storm
    finally:
        dead_letter_alert.disconnect(on_alert)
