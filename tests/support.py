"""Helpers shared by the test tiers: real services, test apps, worker processes.

Waiting, killable processes and the fault proxy come from the public chaos kit,
``celery_reliable.testing``; what is here is specific to this repository.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import pytest
from celery import Celery
from sqlalchemy import text

from celery_reliable import DeadLettered, Reliable
from celery_reliable.store import Database, Tables, build_tables, migrate
from celery_reliable.testing import KillableProcess, celery_command, drop_store, wait_for

ROOT = Path(__file__).resolve().parent.parent
REQUIRE_SERVICES = os.environ.get("RELIABLE_REQUIRE_SERVICES") == "1"

#: Where each service listens; each URL can be overridden with an environment variable.
SERVICES = {
    "postgresql": os.environ.get(
        "RELIABLE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
    ),
    "mysql": os.environ.get("RELIABLE_TEST_MYSQL_URL", "mysql+pymysql://root@127.0.0.1:3306/test"),
    "redis": os.environ.get("RELIABLE_TEST_REDIS_URL", "redis://127.0.0.1:6379/1"),
    "rabbitmq": os.environ.get("RELIABLE_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//"),
}
_PORTS = {"postgresql": 5432, "mysql": 3306, "redis": 6379, "rabbitmq": 5672}


def _reachable(service: str) -> bool:
    url = urlsplit(SERVICES[service])
    try:
        with socket.create_connection(
            (url.hostname or "127.0.0.1", url.port or _PORTS[service]), 2
        ):
            return True
    except OSError:
        return False


def require(service: str) -> str:
    """The service's URL; skip (locally) or fail (CI) when it is not reachable."""
    if not _reachable(service):
        message = f"{service} is not reachable ({SERVICES[service]}); see README 'Services'"
        if REQUIRE_SERVICES:
            pytest.fail(f"RELIABLE_REQUIRE_SERVICES=1 but {message}")
        pytest.skip(message)
    return SERVICES[service]


def database_url(kind: str, tmp_path: Path) -> str:
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'store.sqlite3'}"
    return require(kind)


def dead_lettered(result: Any, timeout: float = 30) -> DeadLettered:
    """Wait for ``result`` to fail as a dead letter: the ``DeadLettered`` its ``.get()`` raises."""
    with pytest.raises(DeadLettered) as caught:
        result.get(timeout=timeout, interval=0.02)
    assert result.failed()
    return caught.value


def unique(prefix: str = "t") -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}_"


def make_app(
    broker_url: str,
    database_url: str,
    table_prefix: str,
    *,
    backend: str = "cache+memory://",
    **conf: Any,
) -> Celery:
    """A Celery app with the extension, its own queue and its own store tables."""
    app = Celery(f"test_{table_prefix}", broker=broker_url, backend=backend, set_as_current=False)
    settings: dict[str, Any] = {
        "reliable_database_url": database_url,
        "reliable_table_prefix": table_prefix,
        "task_default_queue": f"q_{table_prefix}",
        "broker_connection_retry_on_startup": True,
        "worker_hijack_root_logger": False,
        # Redis: a killed worker's messages come back after seconds, not the default hour.
        # In-memory transport: it polls, and the default second would slow every test.
        "broker_transport_options": (
            {"polling_interval": 0.01}
            if broker_url == "memory://"
            else {
                "visibility_timeout": 3,
                "unacked_restore_interval": 1,
                "unacked_restore_throttle": 1,
            }
        ),
    }
    settings.update(conf)
    app.conf.update(settings)
    Reliable(app)
    return app


def celery_process(args: list[str], env: dict[str, str], log: Path) -> KillableProcess:
    """``celery ARGS`` from the repository root, so the test apps (``tests.…``) import."""
    return KillableProcess(
        celery_command(*args), env={"PYTHONPATH": str(ROOT), **env}, cwd=ROOT, log=log
    )


@contextmanager
def worker_process(
    app_module: str, env: dict[str, str], log: Path, *extra: str
) -> Iterator[KillableProcess]:
    worker = celery_process(["-A", app_module, "worker", "--loglevel=INFO", *extra], env, log)
    try:
        yield worker
    finally:
        worker.stop()


@contextmanager
def postgres_store() -> Iterator[tuple[Database, Tables]]:
    """A migrated PostgreSQL store with its own tables, disposed and dropped after."""
    url = require("postgresql")
    database, tables = Database(url), build_tables(unique())
    migrate.upgrade(database, tables)
    try:
        yield database, tables
    finally:
        database.dispose()
        drop_store(url, tables.prefix)


def backend_pid(database: Database, kind: Literal["claims", "autocommit"]) -> int:
    """The PostgreSQL backend of this process's dedicated ``kind`` connection (taking one)."""
    pid = database.dedicated(kind).run(lambda conn: conn.info.backend_pid, "pg_backend_pid", {})
    assert pid is not None, "the dedicated connection is busy"
    return int(pid)


def terminate_backend(database: Database, pid: int) -> None:
    """Kill one backend, as an administrator or a crash would, and wait until it is gone."""
    alive = text("SELECT count(*) FROM pg_stat_activity WHERE pid = :pid")

    def gone() -> bool:
        # A new transaction each time: PostgreSQL keeps one snapshot of pg_stat_activity
        # per transaction, so polling in one would see the backend alive for ever.
        with database.engine.connect() as conn:
            return conn.execute(alive, {"pid": pid}).scalar() == 0

    with database.engine.connect() as conn:
        assert conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar()
    wait_for(gone, 10, what="its exit")
