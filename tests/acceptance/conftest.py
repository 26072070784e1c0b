"""A real broker + store + `celery worker` processes running tests/acceptance/worker_app.py."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from celery import Celery
from click.testing import CliRunner, Result
from sqlalchemy import func, select

from celery_reliable import MESSAGE_ID_HEADER, Reliable
from celery_reliable.cli import reliable as reliable_group
from celery_reliable.exceptions import ConfigurationError
from celery_reliable.testing import KillableProcess, drop_store
from tests.support import (
    ROOT,
    database_url,
    make_app,
    require,
    unique,
    worker_process,
)

APP = "tests.acceptance.worker_app"


class Stack:
    def __init__(self, broker: str, db: str, directory: Path) -> None:
        self.broker, self.db, self.dir = broker, db, directory
        self.prefix = unique()
        self.env = {
            "RT_BROKER": broker,
            "RT_DB": db,
            "RT_PREFIX": self.prefix,
            "RT_DIR": str(directory),
        }
        self.producer = make_app(broker, db, self.prefix, backend="disabled://")
        # The producer knows the tasks it sends (the outbox refuses unknown names); the
        # bodies run in the worker processes (worker_app.py).
        for name in ("effect", "kill_own_process"):
            self.producer.task(name=name, shared=False)(_declared_elsewhere)
        self.reliable = Reliable.of(self.producer)
        self.reliable.create_schema()
        from sqlalchemy import Column, MetaData, String, Table

        self.effects = Table(f"{self.prefix}effects", MetaData(), Column("message_id", String(255)))
        self.effects.create(self.reliable.database.engine)
        self._workers = 0

    @contextmanager
    def worker(self, *extra: str, app: str = APP, **env: str) -> Iterator[KillableProcess]:
        self._workers += 1
        log = self.dir / f"worker-{self._workers}.log"
        args = ("-P", "prefork", "-c", "1", "--without-mingle", "--without-gossip", *extra)
        with worker_process(app, {**self.env, **env}, log, *args) as worker:
            yield worker

    def send(self, task: str, *args: object) -> str:
        message_id = f"{task}-{uuid.uuid4()}"
        self.producer.send_task(task, args, headers={MESSAGE_ID_HEADER: message_id})
        return message_id

    def status(self, message_id: str, key: str):
        return self.reliable.store.get_status(message_id, key)

    def effect_count(self) -> int:
        with self.reliable.database.engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(self.effects)).scalar_one()

    def count(self, name: str) -> int:
        path = self.dir / name
        return len(path.read_text().split()) if path.exists() else 0

    def queue_depth(self) -> int:
        with self.producer.connection_for_write() as conn:
            channel = conn.default_channel
            if conn.transport.driver_type == "redis":  # an empty Redis queue is no key at all
                return int(channel.client.llen(f"q_{self.prefix}"))
            return int(channel.queue_declare(f"q_{self.prefix}", passive=True)[1])

    def outbox_rows(self):
        t = self.reliable.tables.outbox
        with self.reliable.database.engine.connect() as conn:
            return conn.execute(select(t).order_by(t.c.id)).all()

    def outbox_count(self, status: str) -> int:
        t = self.reliable.tables.outbox
        with self.reliable.database.engine.connect() as conn:
            return conn.execute(select(func.count()).where(t.c.status == status)).scalar_one()

    def close(self) -> None:
        with self.producer.connection_for_write() as conn:
            conn.default_channel.queue_delete(f"q_{self.prefix}")
            conn.default_channel.exchange_delete(f"q_{self.prefix}")  # Celery declared it
        self.reliable.database.dispose()
        drop_store(self.db, self.prefix)


def _declared_elsewhere(*args: object, **kwargs: object) -> None:
    """Producer-side declaration of a task whose body runs in the worker."""


#: Each broker with PostgreSQL, plus the other stores once each.
STACKS = [
    ("redis", "postgresql"),
    ("rabbitmq", "postgresql"),
    ("redis", "sqlite"),
    ("rabbitmq", "mysql"),
]


def _stack(kinds: tuple[str, str], tmp_path: Path) -> Iterator[Stack]:
    broker_kind, db_kind = kinds
    s = Stack(require(broker_kind), database_url(db_kind, tmp_path), tmp_path)
    yield s
    s.close()


@pytest.fixture(params=STACKS, ids=["-".join(s) for s in STACKS])
def stack(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stack]:
    yield from _stack(request.param, tmp_path)


@pytest.fixture(params=STACKS[:2], ids=["-".join(s) for s in STACKS[:2]])
def postgres_stack(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stack]:
    """Each broker with the production store."""
    yield from _stack(request.param, tmp_path)


@pytest.fixture
def env(db_url: str, tmp_path: Path) -> Iterator[dict[str, str]]:
    """The environment for `celery -A worker_app ...` on a fresh store prefix (in-memory broker)."""
    prefix = unique()
    yield {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "RT_BROKER": "memory://",
        "RT_DB": db_url,
        "RT_PREFIX": prefix,
        "RT_DIR": str(tmp_path),
    }
    drop_store(db_url, prefix)


def celery(
    env: dict[str, str], *args: str, timeout: float = 60, app: str = APP
) -> subprocess.CompletedProcess[str]:
    """Run `celery -A worker_app ARGS` (or ``app``) as a user would, capturing its output."""
    return subprocess.run(
        [sys.executable, "-m", "celery", "-A", app, *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@dataclasses.dataclass(frozen=True)
class Cli:
    """``celery -A app reliable ARGS``, run in this process by click's runner.

    Each command gets a fresh app (broker, settings, extension, engines), as each command
    is a new process for an operator; ``prepare`` sets up what the app module would (a
    breaker, say). A crash fails the test with its traceback: an exit code is what the
    command chose, never an exception click caught.
    """

    db: str
    prefix: str
    broker: str = "memory://"
    conf: dict[str, Any] = dataclasses.field(default_factory=dict)
    prepare: Callable[[Reliable], None] | None = None

    def but(self, **changes: Any) -> Cli:
        """The same store, another app: ``cli.but(broker=..., conf={...})``."""
        return dataclasses.replace(self, **changes)

    def app(self) -> Celery:
        app = make_app(self.broker, self.db, self.prefix, backend="disabled://", **self.conf)
        app.task(name="effect", shared=False)(_declared_elsewhere)  # as worker_app declares
        if self.prepare is not None:
            self.prepare(Reliable.of(app))
        return app

    def __call__(self, *args: str) -> Result:
        app = self.app()
        extension = Reliable.of(app)
        try:
            result = CliRunner().invoke(reliable_group, list(args), obj=SimpleNamespace(app=app))
        finally:
            with suppress(ConfigurationError):  # bad settings: no store was built
                extension.database.dispose()
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise AssertionError(f"`reliable {' '.join(args)}` crashed") from result.exception
        return result


@pytest.fixture
def cli() -> Iterator[Cli]:
    """The CLI on a fresh PostgreSQL store (unmigrated: a test migrates it if it needs to).

    One database is enough: the commands have no database-specific code, and the store
    adapters under them pass the same contract on every database
    (tests/integration/test_store_conformance.py).
    """
    url = require("postgresql")
    runner = Cli(url, unique())
    yield runner
    drop_store(url, runner.prefix)
