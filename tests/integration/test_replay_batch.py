"""``replay_batch``'s fast path on each store: the rows ``build_row`` makes, written in bulk.

Without a transform, ``replay_batch`` builds outbox rows from the stored columns with the
outbox's MessagePlan instead of a signature and ``build_row``, and writes them with one
statement. The rows must be the ones ``replay`` (signature, ``build_row``) writes for the
same entries, field by field, for both prepared wire formats (Redis, RabbitMQ); that these
rows reach the broker as kombu sends them is tests/integration/test_relay_wire.py's.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

import pytest
from kombu import serialization
from kombu.utils import json as kombu_json
from sqlalchemy import create_engine, select

from celery_reliable import Reliable
from celery_reliable.dead_letters import FailedMessage
from tests.support import make_app

NOW = datetime(2026, 3, 1, 12, 30, 15, 123456, tzinfo=timezone.utc)


def _by_argument(name, args, kwargs, options, task=None, **kw):
    """A router function: where a message goes depends on its arguments."""
    return {"exchange": "by-amount", "routing_key": f"amount-{args[0] if args else None}"}


@pytest.fixture(params=["mapped routes", "router function"])
def routes(request: pytest.FixtureRequest) -> Any:
    if request.param == "router function":
        return [_by_argument]
    return {"shop.refund": {"queue": "refunds"}}


@pytest.fixture
def reliable(broker_url: str, db_url: str, table_prefix: str, routes: Any) -> Iterator[Reliable]:
    app = make_app(broker_url, db_url, table_prefix, task_routes=routes)

    @app.task(name="shop.charge", shared=False)
    def charge(amount: Any, currency: str = "EUR") -> Any:
        return amount

    @app.task(name="shop.refund", shared=False, serializer="json", ignore_result=True)
    def refund(amount: Any) -> Any:
        return amount

    reliable = Reliable.of(app)
    reliable.create_schema()
    yield reliable
    reliable.database.dispose()


def entries(queue: str) -> list[FailedMessage]:
    """Dead letters unlike each other: arguments, headers, queue and priority."""
    return [
        FailedMessage(
            message_id=f"order-{n}",
            task_id=f"old-task-{n}",
            task_name="shop.refund" if n % 3 == 2 else "shop.charge",
            handler_key="shop.charge",
            args=[n, 'naïve ☃ "quoted" \\ \x01', {"nested": [1, 2.5, None, True]}],
            kwargs=(
                None
                if n % 4 == 1
                else {"currency": "EUR", "when": NOW, "big": 2**40, "text": "é" * n}
            ),
            headers={
                "tenant": "acme",
                "trace": [n, {"x": "y"}],
                "id": f"old-task-{n}",  # Celery's own: replaced
                "retries": 3,
                "reliable_deferrals": 2,  # the failed run's bookkeeping: dropped
            },
            delivery_info=(
                {"exchange": "", "routing_key": queue, "priority": (n % 2 and 5) or None}
                if n % 5
                else {"exchange": "", "routing_key": "not-declared"}
            ),
            attempts=3,
        )
        for n in range(12)
    ]


def test_the_fast_path_writes_the_rows_build_row_writes(reliable, monkeypatch):
    dl, outbox = reliable.dead_letters, reliable.tables.outbox
    queue = reliable.app.conf.task_default_queue
    ids = [dl.add(entry, "MaxRetriesExceeded", detail="x") for entry in entries(queue)]
    # The same task ids and clock for both paths, so that whole rows can be compared.
    monkeypatch.setattr("celery_reliable.outbox.utcnow", lambda: NOW)  # build_row's
    monkeypatch.setattr("celery_reliable.dead_letters.replay.utcnow", lambda: NOW)  # a chunk's
    slow_ids = (f"task-{n}" for n in itertools.count())
    monkeypatch.setattr("celery_reliable.dead_letters.replay.uuid", lambda: next(slow_ids))
    monkeypatch.setattr(
        "celery_reliable.wire.delivery_tags", lambda: (f"task-{n}" for n in itertools.count())
    )
    expected = [dl._replay.prepare(dl.get(entry_id), None)[0] for entry_id in ids]  # build_row

    assert dl.replay_batch() == len(ids)

    columns = list(expected[0])
    with reliable.database.engine.connect() as conn:
        stored = conn.execute(select(*(outbox.c[c] for c in columns)).order_by(outbox.c.id))
        rows = [row._asdict() for row in stored]
    assert len(rows) == len(expected)
    for row, want in zip(rows, expected, strict=True):
        for column in columns:
            assert row[column] == want[column], (row["message_id"], column)
    driver = reliable.outbox.driver_type
    formats = {row["wire_format"] for row in rows}
    assert formats == ({"amqp"} if driver == "amqp" else {"redis", None})  # priority: kombu's
    assert all(row["wire"] for row in rows if row["wire_format"] == "amqp")
    assert dl.count(replayed=False) == 0


@pytest.fixture
def server_db(db_url: str) -> str:
    if db_url.startswith("sqlite"):
        pytest.skip("SQLite neither locks rows nor enforces column lengths")
    return db_url


@pytest.fixture
def store(server_db: str, table_prefix: str) -> Iterator[Reliable]:
    long = "x" * 300  # longer than the outbox's exchange column
    app = make_app(
        "memory://",
        server_db,
        table_prefix,
        task_routes={"shop.far": {"exchange": long, "routing_key": "far"}},
    )
    app.task(name="shop.charge", shared=False)(_amount)
    app.task(name="shop.far", shared=False)(_amount)
    reliable = Reliable.of(app)
    reliable.create_schema()
    yield reliable
    reliable.database.dispose()


def _amount(amount: int) -> int:
    return amount


def _add(reliable: Reliable, n: int, task: str = "shop.charge") -> int:
    message = FailedMessage(
        message_id=f"m-{n}", task_id=f"t-{n}", task_name=task, handler_key=task, args=[n]
    )
    return reliable.dead_letters.add(message, "MaxRetriesExceeded", detail="x")


@pytest.mark.parametrize("chunk", [500, 2])
def test_a_chunk_the_store_refuses_is_replayed_entry_by_entry(store, monkeypatch, chunk):
    monkeypatch.setattr("celery_reliable.dead_letters.replay.REPLAY_CHUNK", chunk)
    dl = store.dead_letters
    for n in range(7):
        _add(store, n, "shop.far" if n == 2 else "shop.charge")
    # The chunk's insert fails in the database (the exchange is too long for its column):
    # its entries are replayed one by one, and only the bad one fails. With chunks of 2,
    # the next chunk was read (and locked) meanwhile: it is let go and read again.
    progress: list[int] = []
    assert dl.replay_batch(progress=progress.append) == 6
    assert [entry.message_id for entry in dl.list(replayed=False)] == ["m-2"]
    assert sum(progress) == 7
    with store.database.engine.connect() as conn:
        sent = conn.scalars(select(store.tables.outbox.c.message_id)).all()
    assert sorted(sent) == ["m-0", "m-1", "m-3", "m-4", "m-5", "m-6"]
    assert dl.replay_batch() == 0


def test_limit_and_stop_after_failures_with_many_chunks(store, monkeypatch):
    monkeypatch.setattr("celery_reliable.dead_letters.replay.REPLAY_CHUNK", 3)
    dl = store.dead_letters
    for n in range(10):
        _add(store, n, "shop.gone" if n in (4, 8) else "shop.charge")
    assert dl.replay_batch(limit=5) == 4  # 0-4: entry 4's task is unknown
    # 4-6 (the next chunk was being read meanwhile): entry 4 fails again, the batch stops.
    assert dl.replay_batch(stop_after_failures=1) == 2
    assert [e.message_id for e in dl.list(replayed=False)] == ["m-9", "m-8", "m-7", "m-4"]
    assert dl.replay_batch() == 2


def test_an_entry_locked_by_another_replay_is_skipped(store):
    dl, table = store.dead_letters, store.tables.dead_letter
    ids = [_add(store, n) for n in range(3)]
    other = create_engine(store.database.url)
    try:
        with other.begin() as conn:  # another replay holds the second entry
            conn.execute(select(table.c.id).where(table.c.id == ids[1]).with_for_update())
            assert dl.replay_batch() == 2
        assert [entry.id for entry in dl.list(replayed=False)] == [ids[1]]
        assert dl.replay_batch() == 1
    finally:
        other.dispose()


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [((7, "naïve", {"k": [1.5, None]}), {"when": NOW, "n": 2**40}), ((), {})],
)
def test_a_plans_message_is_the_one_celery_builds(reliable, args, kwargs):
    """MessagePlan gives as_task_v2 what it would work out itself (origin, argument reprs)."""
    app, outbox = reliable.app, reliable.outbox
    row = outbox.build_row(app.signature("shop.charge", args, kwargs), "m-1", None, None, None, {})
    celery = app.amqp.as_task_v2(row["task_id"], "shop.charge", args, kwargs, ignore_result=False)
    headers = kombu_json.loads(row["headers"])
    assert {key: headers[key] for key in celery.headers} == json.loads(
        kombu_json.dumps(celery.headers)
    )
    assert row["body"] == serialization.dumps(celery.body, serializer="json")[2].encode()


def test_entries_of_an_unknown_task_fail_alike(store, caplog):
    """One plan error for the task, raised for each entry with a traceback of its own."""
    for n in range(5):
        _add(store, n, "shop.gone")
    with caplog.at_level("WARNING", logger="celery_reliable.dead_letters"):
        assert store.dead_letters.replay_batch() == 0
    failures = [r for r in caplog.records if r.getMessage().startswith("replay of dead-letter")]
    assert len(failures) == 5
    assert len({len(caplog.handler.format(r)) for r in failures}) == 1  # no growing traceback
    assert store.dead_letters.count(replayed=False) == 5
