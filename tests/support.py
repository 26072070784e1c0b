"""Helpers shared by the test tiers: real services, condition waits, worker processes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import pytest
from celery import Celery

from celery_reliable import Reliable

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

T = TypeVar("T")


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


def wait_for(
    condition: Callable[[], T], timeout: float = 30.0, interval: float = 0.05, what: str = ""
) -> T:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what or condition}")
        time.sleep(interval)


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


class WorkerProcess:
    """A real ``celery worker`` in its own process group, killable like a crashed host."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self._file = log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery", *args],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT), **env},
            stdout=self._file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL the whole worker (main process and pool children): nothing gets to clean up."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        """Warm shutdown (SIGTERM), escalating to SIGKILL."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()
        self._file.close()


@contextmanager
def worker_process(
    app_module: str, env: dict[str, str], log: Path, *extra: str
) -> Iterator[WorkerProcess]:
    worker = WorkerProcess(["-A", app_module, "worker", "--loglevel=INFO", *extra], env, log)
    try:
        yield worker
    finally:
        worker.stop()


class FaultyLink:
    """A TCP proxy on 127.0.0.1 that a test can cut and restore (the real service stays up).

    Cut: every open connection is closed and new ones are closed as soon as accepted, as a
    broker or network outage looks to a client. ``delay`` (seconds) holds back every chunk
    of data in both directions: a slow network or an overloaded service.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.delay = 0.0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._cut = threading.Event()
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def url_for(self, url: str) -> str:
        parts = urlsplit(url)
        netloc = parts.netloc.replace(f"{parts.hostname}:{parts.port}", f"127.0.0.1:{self.port}")
        return parts._replace(netloc=netloc).geturl()

    def cut(self) -> None:
        self._cut.set()
        with self._lock:
            for sock in list(self._open):
                _close(sock)
            self._open.clear()

    def restore(self) -> None:
        self._cut.clear()

    def close(self) -> None:
        self._closed = True
        self.cut()
        _close(self._listener)

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self._cut.is_set():
                _close(client)
                continue
            try:
                upstream = socket.create_connection(self.target, 5)
            except OSError:
                _close(client)
                continue
            upstream.settimeout(None)  # the 5 s was for connecting: idle links stay open
            with self._lock:
                self._open.update((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            with suppress(OSError):
                while data := source.recv(65536):
                    if self.delay:
                        time.sleep(self.delay)  # the fault being simulated: latency
                    sink.sendall(data)
        finally:
            _close(source)
            _close(sink)


def _close(sock: socket.socket) -> None:
    with suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()
