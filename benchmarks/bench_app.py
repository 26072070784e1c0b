"""The benchmark's tasks. The worker process runs ``app``, built from BENCH_* variables."""

from __future__ import annotations

import os

from celery import Celery

from celery_reliable import Reliable, ReliableTask

TASK_NAMES = {
    "plain (default)": "bench.plain",
    "plain (acks_late)": "bench.plain_acks_late",
    "reliable": "bench.reliable",
}
VARIANTS = tuple(TASK_NAMES)


def create_app(broker: str, database: str, prefix: str, queue: str) -> Celery:
    """Three no-op tasks that differ only in how they are acknowledged and recorded."""
    app = Celery("bench", broker=broker, set_as_current=False)
    app.conf.update(
        task_ignore_result=True,
        task_default_queue=queue,
        broker_connection_retry_on_startup=True,
        reliable_database_url=database,
        reliable_table_prefix=prefix,
    )
    Reliable(app)

    @app.task(name=TASK_NAMES["plain (default)"], shared=False)
    def plain() -> None:
        """Plain Celery with its defaults (acknowledged before it runs)."""

    @app.task(name=TASK_NAMES["plain (acks_late)"], acks_late=True, shared=False)
    def plain_acks_late() -> None:
        """Plain Celery acknowledging after the run, as a reliable task does."""

    @app.task(name=TASK_NAMES["reliable"], base=ReliableTask, shared=False)
    def reliable() -> None:
        """Inbox claim and completion mark around the same empty body."""

    return app


if "BENCH_BROKER" in os.environ:  # in the worker process (celery -A benchmarks.bench_app)
    app = create_app(
        os.environ["BENCH_BROKER"],
        os.environ["BENCH_DB"],
        os.environ["BENCH_PREFIX"],
        os.environ["BENCH_QUEUE"],
    )
