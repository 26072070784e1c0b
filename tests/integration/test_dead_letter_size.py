"""Dead letters of messages of megabytes on MySQL/MariaDB, whose statements have a size limit.

An entry over ``max_allowed_packet`` used to be refused by a dropped connection, which the
intake took for an unreachable store: the message was requeued for ever (found by the fuzz
suite on MariaDB). Now the entry is cut to fit and says what it left out.
"""

from __future__ import annotations

import pytest
from sqlalchemy import select

from celery_reliable import DeadLetterReason, Reliable
from celery_reliable.dead_letters import FailedMessage
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
