"""OpenTelemetry metrics, read back through the SDK's in-memory reader."""

from __future__ import annotations

import pytest
from celery.contrib.testing.worker import start_worker
from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from celery_reliable import MESSAGE_ID_HEADER, Reliable, ReliableTask, RetryPolicy
from celery_reliable.testing import wait_for
from tests.support import dead_lettered, make_app

READER = InMemoryMetricReader()


@pytest.fixture(scope="module")
def meter_provider():
    """The process's meter provider (OpenTelemetry allows setting it once)."""
    metrics.set_meter_provider(MeterProvider(metric_readers=[READER]))
    return READER


def points(name):
    """{frozenset(attributes): value} of every data point of metric ``name``."""
    found = {}
    data = READER.get_metrics_data()
    for resource in data.resource_metrics if data else []:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name == name:
                    for point in metric.data.data_points:
                        value = getattr(point, "value", None)
                        found[frozenset(point.attributes.items())] = (
                            value if value is not None else point.count
                        )
    return found


@pytest.fixture(scope="module")
def app(meter_provider, module_db):
    """Tasks named after the store prefix: the process's metrics add up across modules."""
    app = make_app("memory://", *module_db)
    prefix = module_db[1]
    reliable = Reliable.of(app)
    reliable.create_schema()

    @app.task(base=ReliableTask, bind=True, shared=False, name=f"{prefix}ok")
    def ok(self):
        return 1

    @app.task(
        base=ReliableTask, shared=False, name=f"{prefix}bad", retry_policy=RetryPolicy.fixed(0, 0)
    )
    def bad():
        raise ValueError("no")

    app.ok, app.bad = ok, bad
    with start_worker(
        app, pool="threads", concurrency=1, perform_ping_check=False, shutdown_timeout=60
    ):
        yield app
    reliable.database.dispose()


def test_deliveries_duplicates_dead_letters_and_lags_are_counted(app):
    name, bad = app.ok.name, app.bad.name
    headers = {MESSAGE_ID_HEADER: "order-1"}
    assert app.ok.apply_async(headers=headers).get(timeout=30) == 1
    duplicate = app.ok.apply_async(headers=headers)
    assert duplicate.get(timeout=30) == 1
    dead_lettered(app.bad.delay())

    def delivered(outcome, task=name):
        key = frozenset({"task": task, "handler_key": task, "outcome": outcome}.items())
        return points("celery_reliable.inbox.deliver.count").get(key, 0)

    wait_for(lambda: delivered("duplicate") == 1, 10, what="the duplicate to be counted")
    assert delivered("completed") == 1
    assert delivered("dead_lettered", bad) == 1

    def of_tasks(metric):
        return sum(v for k, v in points(metric).items() if dict(k).get("task") in (name, bad))

    assert of_tasks("celery_reliable.inbox.duplicate.count") == 1
    reasons = points("celery_reliable.dead_letter.count")
    assert reasons[frozenset({"reason": "MaxRetriesExceeded", "task": bad}.items())] == 1
    assert of_tasks("celery_reliable.process.lag") == 3  # one per delivery
    assert of_tasks("celery_reliable.receive.lag") == 3
    assert of_tasks("celery_reliable.inbox.process.duration") == 3


def test_gauges_come_from_the_store(app):
    """Self-contained: xdist may run this test in another process than the one above."""
    reliable = Reliable.of(app)
    dead_lettered(app.bad.apply_async(headers={MESSAGE_ID_HEADER: "gauges-bad"}))
    with reliable.database.engine.begin() as conn:
        reliable.outbox.enqueue(conn, app.ok.s())
    outbox, inbox = reliable.admin.outbox_stats(), reliable.admin.inbox_stats()
    assert outbox.due >= 1
    assert inbox["poisoned"] >= 1
    reliable.metrics._gauges_at = 0.0  # the next collection queries the store again
    this_app = frozenset({"app": app.main}.items())
    assert points("celery_reliable.outbox.pending")[this_app] == outbox.due
    assert points("celery_reliable.dead_letter.depth")[this_app] == reliable.dead_letters.depth()
    assert points("celery_reliable.dead_letter.depth")[this_app] >= 1
    assert points("celery_reliable.outbox.oldest_age")[this_app] >= 0
    assert points("celery_reliable.outbox.poisoned")[this_app] == outbox.poisoned == 0
    assert points("celery_reliable.inbox.poisoned")[this_app] == inbox["poisoned"]


def test_the_relay_counts_what_it_publishes(app):
    reliable = Reliable.of(app)
    before = points("celery_reliable.outbox.process.count").get(
        frozenset({"status": "sent"}.items()), 0
    )
    with reliable.database.engine.begin() as conn:
        for _ in range(3):
            reliable.outbox.enqueue(conn, app.ok.s())
    assert reliable.relay.drain() >= 3
    after = points("celery_reliable.outbox.process.count")[frozenset({"status": "sent"}.items())]
    assert after - before >= 3
    assert sum(points("celery_reliable.outbox.batch.size").values()) >= 1
    assert sum(points("celery_reliable.outbox.process.duration").values()) >= 1
