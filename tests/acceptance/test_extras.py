"""Each extra installs what it promises: ``pip install "celery-reliable[STORE,BROKER]"`` a
working worker, ``[flower]`` a working ``celery reliable flower``.

Every other test runs in the development environment, which has every extra at once, so an
extra that forgets what kombu's transport imports (as ``redis`` once forgot ``packaging``)
passes them all. Here each broker extra is installed with one store extra (``redis`` with
``postgres``, ``rabbitmq`` with ``mysql``, so each store extra is installed alone once too)
into a fresh virtualenv (no system site-packages, not this checkout), and a real ``celery
worker`` on that broker runs a ReliableTask whose result the test reads back. The
``flower`` extra alone, on the base install's SQLite store, serves the Dead Letters page.

The wheels (this checkout's and its dependencies') are built once per module and installed
with ``--no-index``, so both virtualenvs get exactly what each extra asks for, fast.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from celery_reliable.testing import KillableProcess, drop_store
from tests.support import ROOT, require, unique

from .flower_support import dead_letters_page
from .test_flower import free_port

APP = """
import os

from celery import Celery

from celery_reliable import Reliable, ReliableTask

app = Celery("extrasapp", broker=os.environ["X_BROKER"], backend=os.environ["X_BACKEND"])
app.conf.update(
    reliable_database_url=os.environ["X_DB"],
    reliable_table_prefix=os.environ["X_PREFIX"],
    task_default_queue="q_" + os.environ["X_PREFIX"],
    broker_connection_retry_on_startup=True,
)
Reliable(app)


@app.task(base=ReliableTask, bind=True)
def add(self, a, b):
    with self.transaction():
        pass
    return a + b
"""

#: broker extra -> (its service, the store extra and service installed with it, result
#: backend URL from the broker's URL).
EXTRAS = {
    "redis": ("redis", "postgres", "postgresql", lambda url: url),
    "rabbitmq": ("rabbitmq", "mysql", "mysql", lambda url: "rpc://"),
}


def run(*args: str | Path, cwd: Path, env: dict[str, str] | None = None) -> str:
    """Run a command away from the checkout: found on ``sys.path`` (the working directory
    under ``python -m``, or ``PYTHONPATH``), its ``egg-info`` would pass for an installed
    package and pip would skip installing it."""
    if env is None:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [str(a) for a in args], env=env, cwd=cwd, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This checkout's wheel and every wheel the tested extras need, built once."""
    house = tmp_path_factory.mktemp("wheels")
    extras = ",".join(["postgres", "mysql", "flower", *EXTRAS])
    run(sys.executable, "-m", "pip", "wheel", "-q", "-w", house, f"{ROOT}[{extras}]", cwd=house)
    return house


def installed(
    wheelhouse: Path, tmp_path: Path, extras: str, **variables: str
) -> tuple[Path, Path, dict[str, str]]:
    """``celery-reliable[extras]`` alone in a new virtualenv, and a folder for the app with
    ``APP`` in it: (its python, the folder, the environment to run commands in)."""
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv, cwd=tmp_path)
    python = venv / "bin" / "python"
    install = ["install", "-q", "--no-compile", "--no-index", "--find-links", str(wheelhouse)]
    run(python, "-m", "pip", *install, f"celery-reliable[{extras}]", cwd=tmp_path)
    project = tmp_path / "project"
    project.mkdir()
    (project / "extrasapp.py").write_text(APP)
    env = {
        "PATH": f"{venv / 'bin'}:/usr/bin:/bin",
        "PYTHONPATH": str(project),
        "HOME": str(tmp_path),
        **variables,
    }
    where = run(
        python, "-c", "import celery_reliable as c; print(c.__file__)", cwd=project, env=env
    )
    assert where.startswith(str(venv)), where  # the installed copy, not this checkout
    return python, project, env


@pytest.mark.timeout(300)
@pytest.mark.parametrize("extra", sorted(EXTRAS))
def test_the_extra_alone_runs_a_worker_on_its_broker(
    extra: str, wheelhouse: Path, tmp_path: Path
) -> None:
    service, store_extra, store, backend_of = EXTRAS[extra]
    broker = require(service)
    db = require(store)
    prefix = unique("x")
    python, project, env = installed(
        wheelhouse,
        tmp_path,
        f"{store_extra},{extra}",
        X_BROKER=broker,
        X_BACKEND=backend_of(broker),
        X_DB=db,
        X_PREFIX=prefix,
    )
    try:
        run(
            python,
            "-m",
            "celery",
            "-A",
            "extrasapp",
            "reliable",
            "db",
            "upgrade",
            cwd=project,
            env=env,
        )
        worker = KillableProcess(
            [str(python), "-m", "celery", "-A", "extrasapp", "worker", "-c", "1",
             "--without-mingle", "--without-gossip", f"--hostname={prefix}@%h"],
            env=env, cwd=project, log=tmp_path / "worker.log",
        )  # fmt: skip
        try:
            client = "from extrasapp import add; print(add.delay(2, 3).get(timeout=60))"
            answer = subprocess.run(
                [python, "-c", client],
                env=env,
                cwd=project,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert worker.proc.poll() is None, worker.output()
        finally:
            worker.stop()
        assert answer.stdout.strip() == "5", answer.stderr + worker.output()
    finally:
        drop_store(db, prefix)


@pytest.mark.timeout(300)
def test_the_flower_extra_alone_serves_the_dead_letters_page(wheelhouse: Path, tmp_path: Path):
    """What the README's shop and the quick start install for Flower's command: no store or
    broker extra (the base install's SQLite store, an in-memory broker)."""
    python, project, env = installed(
        wheelhouse,
        tmp_path,
        "flower",
        X_BROKER="memory://",
        X_BACKEND="disabled://",
        X_DB=f"sqlite:///{tmp_path / 'store.sqlite3'}",
        X_PREFIX="reliable_",
    )
    celery = [str(python), "-m", "celery", "-A", "extrasapp", "reliable"]
    run(*celery, "db", "upgrade", cwd=project, env=env)
    port = free_port()
    flower = KillableProcess(
        [*celery, "flower", "--address=127.0.0.1", "--dead-letters-allow-unauthenticated",
         f"--port={port}"],
        env=env, cwd=project, log=tmp_path / "flower.log",
    )  # fmt: skip
    try:
        html = dead_letters_page(flower, port)
    finally:
        flower.stop()
    assert "<title>Dead letters · Flower</title>" in html
