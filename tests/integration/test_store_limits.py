"""Values of megabytes on MySQL/MariaDB, whose statements have a size limit.

A dead-letter entry over ``max_allowed_packet`` used to be refused by a dropped connection,
which the intake took for an unreachable store: the message was requeued for ever (found by
the fuzz suite on MariaDB). Now the entry is cut to fit and says what it left out. A stored
result too large is not stored, and an error text is cut, so a completion is never refused.
"""

from __future__ import annotations

import pytest
from sqlalchemy import select

from celery_reliable import DeadLetterReason, Reliable
from celery_reliable.clock import utcnow
from celery_reliable.dead_letters import FailedMessage
from celery_reliable.store.base import Status
from celery_reliable.store.limits import STATEMENT_ROOM, value_budget
from celery_reliable.testing import drop_store
from tests.support import make_app, require, unique

pytestmark = pytest.mark.services

MB = 1024 * 1024


@pytest.fixture
def reliable():
    url, prefix = require("mysql"), unique()
    app = make_app("memory://", url, prefix, reliable_outbox_max_payload_bytes=16 * MB)
    reliable = Reliable.of(app)
    reliable.create_schema()

    @app.task(name="shop.import", shared=False)
    def import_file(data):
        return len(data)

    yield reliable
    reliable.database.dispose()
    drop_store(url, prefix)


def huge(size: int) -> FailedMessage:
    data = "z" * size
    return FailedMessage(
        message_id="big-1",
        task_id="big-1",
        task_name="shop.import",
        handler_key="shop.import",
        args=[data],
        kwargs={},
        raw_body=f'[["{data}"], {{}}, {{}}]'.encode(),
        content_type="application/json",
        content_encoding="utf-8",
    )


def test_the_store_reports_its_statement_limit(reliable):
    limit = reliable.database.packet_limit()
    with reliable.database.engine.connect() as conn:
        assert limit == conn.exec_driver_sql("SELECT @@max_allowed_packet").scalar_one()
    assert value_budget(reliable.database) == limit // 2 - STATEMENT_ROOM


def test_a_large_entry_drops_the_raw_body_and_stays_replayable(reliable):
    size = reliable.database.packet_limit() // 2 - MB  # fits, but not twice
    letters = reliable.dead_letters
    entry = letters.get(letters.add(huge(size), DeadLetterReason.HANDLER_NOT_FOUND))
    assert entry.raw_body is None
    assert entry.args == ["z" * size]
    assert f"raw body of {size + 14} bytes not kept" in entry.exception_message
    letters.replay(entry.id)
    outbox = reliable.tables.outbox
    with reliable.database.engine.connect() as conn:
        assert conn.scalar(select(outbox.c.message_id)) == "big-1"


def test_an_entry_over_the_limit_keeps_the_start_of_its_body(reliable):
    limit = reliable.database.packet_limit()
    letters = reliable.dead_letters
    entry = letters.get(letters.add(huge(limit), DeadLetterReason.HANDLER_NOT_FOUND))
    assert entry.args is None
    assert entry.raw_body is not None
    assert entry.raw_body == b'[["' + b"z" * (len(entry.raw_body) - 3)
    assert limit // 4 < len(entry.raw_body) < limit // 2
    assert "arguments of" in entry.exception_message
    assert f"raw body cut to {len(entry.raw_body)} of {limit + 14} bytes" in (
        entry.exception_message
    )


def test_a_completion_with_a_result_over_the_limit_completes_without_it(reliable):
    store, limit = reliable.store, reliable.database.packet_limit()
    for n, (result, error) in enumerate([("x" * limit, None), (None, "e" * limit)]):
        message_id = f"big-{n}"
        assert store.insert_claim(message_id, "shop.import", "shop.import", utcnow(), "w:1")
        status = Status.COMPLETED if result else Status.FAILED
        finished = store.finish(
            message_id, "shop.import", 1, status, utcnow(), result=result, error=error
        )
        assert finished
        row = store.get_status(message_id, "shop.import")
        assert row.status is status
        assert row.result is None
    status = reliable.tables.inbox_status
    with reliable.database.engine.connect() as conn:
        error = conn.scalar(select(status.c.last_error).where(status.c.message_id == "big-1"))
    assert 0 < len(error) < limit // 2
    assert set(error) == {"e"}
