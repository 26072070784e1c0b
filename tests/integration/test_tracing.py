"""Trace context travels through the outbox: the stored headers carry the caller's trace."""

from __future__ import annotations

from kombu.utils import json as kombu_json
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from sqlalchemy import select

from celery_reliable import Reliable
from celery_reliable.message import SENT_AT_HEADER
from tests.support import make_app


def test_enqueue_stores_the_callers_traceparent(db_url, table_prefix):
    trace.set_tracer_provider(TracerProvider())
    app = make_app("memory://", db_url, table_prefix)
    app.task(name="shop.ship", shared=False)(_ship)
    reliable = Reliable.of(app)
    reliable.create_schema()
    tracer = trace.get_tracer("test")
    with tracer.start_as_current_span("POST /orders") as span:
        with reliable.database.engine.begin() as conn:
            reliable.outbox.enqueue(conn, app.tasks["shop.ship"].s(1))
        trace_id = format(span.get_span_context().trace_id, "032x")
    with reliable.database.engine.connect() as conn:
        stored = conn.execute(select(reliable.tables.outbox.c.headers)).scalar_one()
    headers = kombu_json.loads(stored)
    assert headers["traceparent"].split("-")[1] == trace_id
    assert isinstance(headers[SENT_AT_HEADER], float)
    reliable.database.dispose()


def _ship(order: int) -> int:
    return order
