"""The benchmark's tasks. The worker process runs ``app``, built from BENCH_* variables."""

from __future__ import annotations

import os
from typing import Any

from celery import Celery
from sqlalchemy import Column, MetaData, String, Table, create_engine
from sqlalchemy.orm import sessionmaker

from celery_reliable import Reliable, ReliableTask

TASK_NAMES = {
    "plain (default)": "bench.plain",
    "plain (acks_late)": "bench.plain_acks_late",
    "reliable": "bench.reliable",
    "plain (insert)": "bench.plain_insert",
    "reliable (insert)": "bench.reliable_insert",
    "ref: 1 sync stmt": "bench.one_statement",
    "ref: 1 async stmt": "bench.one_async_statement",
}
VARIANTS = tuple(TASK_NAMES)
#: The variants whose body inserts one row into :func:`effects_table`.
INSERTING = ("plain (insert)", "reliable (insert)", "ref: 1 sync stmt", "ref: 1 async stmt")
#: The references: what one round trip per task costs, committed synchronously (durable
#: before the task returns, as a completion mark must be) or not (issue #15's ceilings).
REFERENCES = {
    "ref: 1 sync stmt": "one durable round trip per task",
    "ref: 1 async stmt": "one asynchronous round trip per task",
}


def effects_table(prefix: str) -> Table:
    """One row per message, written by the inserting tasks (dropped with the store's tables)."""
    return Table(f"{prefix}effects", MetaData(), Column("message", String(64), primary_key=True))


def create_app(broker: str, database: str, prefix: str, queue: str) -> Celery:
    """No-op and one-row tasks that differ only in how they are acknowledged and recorded."""
    app = Celery("bench", broker=broker, set_as_current=False)
    app.conf.update(
        task_ignore_result=True,
        task_default_queue=queue,
        broker_connection_retry_on_startup=True,
        reliable_database_url=database,
        reliable_table_prefix=prefix,
    )
    Reliable(app)
    effects = effects_table(prefix)
    # The plain task's own engine, as an app without celery_reliable has one. Creating it
    # opens no connection, so each pool process connects after the fork.
    sessions = sessionmaker(create_engine(database))
    # The references' engines: each statement is its own transaction (one round trip),
    # committed synchronously or, on PostgreSQL, with synchronous_commit off.
    durable = create_engine(database, isolation_level="AUTOCOMMIT")
    relaxed = create_engine(
        database,
        isolation_level="AUTOCOMMIT",
        **(
            {"connect_args": {"options": "-c synchronous_commit=off"}}
            if database.startswith("postgresql")
            else {}
        ),
    )

    @app.task(name=TASK_NAMES["plain (default)"], shared=False)
    def plain() -> None:
        """Plain Celery with its defaults (acknowledged before it runs)."""

    @app.task(name=TASK_NAMES["plain (acks_late)"], acks_late=True, shared=False)
    def plain_acks_late() -> None:
        """Plain Celery acknowledging after the run, as a reliable task does."""

    @app.task(name=TASK_NAMES["reliable"], base=ReliableTask, shared=False)
    def reliable() -> None:
        """Inbox claim and completion mark around the same empty body."""

    @app.task(name=TASK_NAMES["plain (insert)"], bind=True, shared=False)
    def plain_insert(self: Any) -> None:
        """How a task is written without celery_reliable: its own Session, one row, commit."""
        with sessions() as session:
            session.execute(effects.insert().values(message=self.request.id))
            session.commit()

    @app.task(name=TASK_NAMES["reliable (insert)"], base=ReliableTask, bind=True, shared=False)
    def reliable_insert(self: Any) -> None:
        """The same row through ``self.transaction()``, committed with the completion mark."""
        with self.transaction() as session:
            session.execute(effects.insert().values(message=self.request.id))

    @app.task(name=TASK_NAMES["ref: 1 sync stmt"], bind=True, shared=False)
    def one_statement(self: Any) -> None:
        """Reference: one INSERT, committed synchronously on its own (one round trip)."""
        with durable.connect() as conn:
            conn.execute(effects.insert().values(message=self.request.id))

    @app.task(name=TASK_NAMES["ref: 1 async stmt"], bind=True, shared=False)
    def one_async_statement(self: Any) -> None:
        """Reference: the same INSERT with an asynchronous commit (no WAL flush waited for)."""
        with relaxed.connect() as conn:
            conn.execute(effects.insert().values(message=self.request.id))

    return app


if "BENCH_BROKER" in os.environ:  # in the worker process (celery -A benchmarks.bench_app)
    app = create_app(
        os.environ["BENCH_BROKER"],
        os.environ["BENCH_DB"],
        os.environ["BENCH_PREFIX"],
        os.environ["BENCH_QUEUE"],
    )
