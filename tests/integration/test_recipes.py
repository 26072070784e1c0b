"""The docs' application code runs as written, against PostgreSQL.

- docs/quickstart.md: its ``# shop.py`` blocks are written to a file, its commands run in
  that folder, an order placed through its code is charged once by a worker.
- docs/production.md: the Flask-SQLAlchemy and Django recipes (docs/recipes/, included by
  the page) commit a message with the order or not at all.
- docs/deployment.md: the quoted ``db current``/``db upgrade`` session prints what it shows.

Each test gets a fresh database, as a new application would: the docs' table names are
fixed, and other tests share the ``test`` database. Only URLs are replaced in the docs' code.
"""

from __future__ import annotations

import base64
import importlib.util
import os
import re
import shlex
import socket
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest
from celery.contrib.testing.worker import start_worker
from click.testing import CliRunner
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url

from celery_reliable import Reliable
from celery_reliable.cli import reliable as reliable_group
from celery_reliable.testing import KillableProcess, celery_command, wait_for
from tests.support import ROOT, require

DOCS = ROOT / "docs"
#: What the docs write, and what the tests put in its place.
DOC_BROKER = "redis://127.0.0.1:6379/0"


@pytest.fixture
def database() -> Iterator[str]:
    """A new, empty PostgreSQL database; its URL."""
    url = make_url(require("postgresql"))
    name = f"recipes_{uuid.uuid4().hex[:10]}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    yield url.set(database=name).render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE "{name}" WITH (FORCE)')
    admin.dispose()


@pytest.fixture(autouse=True)
def _shared_tasks_stay_here() -> Iterator[None]:
    """Forget the tasks the docs' modules declare once the test is done.

    ``@app.task`` is shared by default: Celery adds it to every app finalized later in the
    process, where it would name retry policies that app never registered.
    """
    from celery import _state

    before = set(_state._on_app_finalizers)
    yield
    _state._on_app_finalizers.intersection_update(before)


def blocks(page: Path, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", page.read_text(), re.DOTALL)


def replaced(source: str, **urls: str) -> str:
    """``source`` with each URL the docs write (a key's value) put as the test's (the key)."""
    for ours, theirs in urls.items():
        assert theirs in source, f"the docs no longer write {theirs!r}"
        source = source.replace(theirs, ours)
    return source


def load(path: Path, name: str) -> ModuleType:
    """Import ``path`` as module ``name`` (a fresh one, forgotten by sys.modules after)."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec
    assert spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def count(engine: Any, table: str, **where: Any) -> int:
    query = select(func.count()).select_from(text(table))
    for column, value in where.items():
        query = query.where(text(f"{column} = :{column}").bindparams(**{column: value}))
    with engine.connect() as conn:
        return int(conn.scalar(query) or 0)


# -- the quick start ---------------------------------------------------------------------------


def test_the_quick_start_runs_as_written(database: str, tmp_path: Path):
    page = DOCS / "quickstart.md"
    code = [b for b in blocks(page, "python") if b.startswith("# shop.py")]
    assert len(code) == 2, "the quick start's shop.py comes in two blocks"
    source = replaced("".join(code), **{"memory://": DOC_BROKER})
    (tmp_path / "shop.py").write_text(
        replaced(source, **{database: "postgresql+psycopg://app@db/shop"})
    )
    (commands,) = [b for b in blocks(page, "bash") if "reliable db upgrade" in b]
    lines = [line.split("  #")[0].strip() for line in commands.splitlines()]
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{tmp_path}"}
    for line in lines[:2]:  # the store's tables, then the shop's
        result = subprocess.run(
            shlex.split(line), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0, f"{line}\n{result.stdout}{result.stderr}"
    assert [line.split()[:4] for line in lines[2:5]] == [
        ["celery", "-A", "shop", "worker"],
        ["celery", "-A", "shop", "reliable"],
        ["celery", "-A", "shop", "beat"],
    ]
    check_flower_starts(lines[5], tmp_path, env)

    shop = load(tmp_path / "shop.py", "shop")
    try:
        place = re.search(r'`python -c "(.*?)"`', page.read_text())
        assert place, "the quick start places an order with python -c"
        exec(place.group(1).replace("import shop; ", ""), {"shop": shop})
        assert shop.reliable.relay.drain() == 1
        with start_worker(shop.app, pool="threads", concurrency=1, perform_ping_check=False):
            wait_for(
                lambda: count(shop.engine, "shop_payment", order_id="order-1") == 1,
                60,
                what="the charge to run",
            )
        assert count(shop.engine, "shop_payment") == 1
    finally:
        shop.reliable.database.dispose()
        del sys.modules["shop"]


def check_flower_starts(line: str, folder: Path, env: dict[str, str]) -> None:
    """The quick start's Flower command serves the Dead Letters page behind its basic auth."""
    pytest.importorskip("flower", reason="flower is in the test extras")
    args = shlex.split(line)
    assert args[:5] == ["celery", "-A", "shop", "reliable", "flower"]
    (auth,) = [a.split("=", 1)[1] for a in args if a.startswith("--basic-auth=")]
    port = free_port()
    process = KillableProcess(
        celery_command(*args[1:], f"--port={port}"), env=env, cwd=folder, log=folder / "flower.log"
    )
    try:
        request = urllib.request.Request(f"http://127.0.0.1:{port}/dead-letters")
        token = base64.b64encode(auth.encode()).decode()
        request.add_header("Authorization", f"Basic {token}")

        def answers() -> bool:
            assert process.proc.poll() is None, process.output()
            try:
                with urllib.request.urlopen(request, timeout=2) as response:
                    return bool(response.status == 200)
            except (urllib.error.URLError, ConnectionError):
                return False

        wait_for(answers, 60, 0.2, what="Flower to serve the Dead Letters page")
    finally:
        process.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- Flask-SQLAlchemy ----------------------------------------------------------------------------


def test_the_flask_recipe_commits_the_message_with_the_order(database: str, tmp_path: Path):
    pytest.importorskip("flask_sqlalchemy", reason="flask-sqlalchemy is in the test extras")
    recipe = (DOCS / "recipes" / "flask_outbox.py").read_text()
    assert '--8<-- "docs/recipes/flask_outbox.py"' in (DOCS / "production.md").read_text()
    source = replaced(recipe, **{"memory://": DOC_BROKER})
    (tmp_path / "flask_shop.py").write_text(
        replaced(source, **{database: "postgresql+psycopg://app@db/shop"})
    )
    shop = load(tmp_path / "flask_shop.py", "flask_shop")
    try:
        shop.reliable.create_schema()
        with shop.flask_app.app_context():
            shop.db.create_all()
        engine = shop.reliable.database.engine
        outbox = shop.reliable.tables.outbox.name

        response = shop.flask_app.test_client().post("/orders/4200")
        assert response.json == {"order": 1}
        assert count(engine, outbox, message_id="order-1-charge") == 1

        with shop.flask_app.app_context():  # an order whose transaction is rolled back
            order = shop.Order(total_cents=1)
            shop.db.session.add(order)
            shop.db.session.flush()
            shop.reliable.outbox.enqueue(shop.db.session, shop.charge.s(order.id, 1))
            shop.db.session.rollback()
        assert count(engine, outbox) == 1
        assert count(engine, '"order"') == 1
        assert shop.reliable.relay.drain() == 1
    finally:
        shop.reliable.database.dispose()
        del sys.modules["flask_shop"]


def _charge(order_id: int, total_cents: int) -> None:
    """The Django test's task: only enqueued, never run."""


# -- Django ----------------------------------------------------------------------------------------


def test_the_django_recipe_commits_the_message_with_the_order(database: str, tmp_path: Path):
    pytest.importorskip("django", reason="django is in the test extras")
    import django
    from django.conf import settings

    if settings.configured:
        pytest.skip("Django was configured by another test in this process")
    url = make_url(database)
    settings.configure(
        DATABASES={
            "default": {
                "ENGINE": "django.db.backends.postgresql",
                "NAME": url.database,
                "USER": url.username,
                "PASSWORD": url.password or "",
                "HOST": url.host,
                "PORT": url.port or 5432,
            }
        },
        INSTALLED_APPS=[],
        USE_TZ=True,
    )
    django.setup()
    from django.db import connection, models, transaction

    class Order(models.Model):
        total_cents = models.IntegerField()

        class Meta:
            app_label = "shop"

    with connection.schema_editor() as editor:
        editor.create_model(Order)

    from tests.support import make_app

    app = make_app("memory://", database, "reliable_")
    app.task(name="charge", shared=False)(_charge)
    reliable = Reliable.of(app)
    reliable.create_schema()
    outbox = reliable.tables.outbox.name
    recipe = load(DOCS / "recipes" / "django_outbox.py", "django_outbox")
    try:
        (view,) = [b for b in blocks(DOCS / "production.md", "python") if b.startswith("# views")]
        names: dict[str, Any] = {
            "Order": Order,
            "reliable": reliable,
            "charge": app.tasks["charge"],
            "outbox_connection": recipe.outbox_connection,
        }
        exec(view, names)
        place_order = names["place_order"]

        order_id = place_order(4200)
        assert count(reliable.database.engine, outbox, message_id=f"order-{order_id}-charge") == 1
        assert Order.objects.count() == 1

        class Refused(Exception):
            pass

        def fails_after_placing() -> None:
            with transaction.atomic():  # the view's transaction, which fails after the order
                place_order(1)  # nested: the outer block decides
                raise Refused

        with pytest.raises(Refused):
            fails_after_placing()
        assert Order.objects.count() == 1
        assert count(reliable.database.engine, outbox) == 1

        with pytest.raises(RuntimeError, match=r"transaction\.atomic"), recipe.outbox_connection():
            pass
        assert Order.objects.filter(total_cents=4200).exists()  # Django's connection still works
    finally:
        del sys.modules["django_outbox"]
        connection.close()
        reliable.database.dispose()


# -- quoted outputs ----------------------------------------------------------------------------


def test_the_quoted_db_session_prints_what_deployment_md_shows(database: str):
    (session,) = [b for b in blocks(DOCS / "deployment.md", "console") if "db current" in b]
    doc_url = "postgresql+psycopg://app@db/app"
    from tests.support import make_app

    app = make_app("memory://", database, "reliable_")
    runner = CliRunner()
    try:
        for command, expected in re.findall(r"^\$ (.*)\n((?:[^$].*\n)*)", session, re.MULTILINE):
            args = shlex.split(command)
            assert args[:4] == ["celery", "-A", "app", "reliable"]
            result = runner.invoke(reliable_group, args[4:], obj=SimpleNamespace(app=app))
            assert result.exit_code in (0, 1), result.output
            printed = result.output.replace(make_url(database).render_as_string(), doc_url)
            assert printed == expected, f"`{command}` prints:\n{printed}"
    finally:
        Reliable.of(app).database.dispose()
