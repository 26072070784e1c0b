"""docs/celery-patterns.md runs as written: each pattern's code against a real worker.

The page includes its examples from docs/patterns/*.py (mkdocs snippets, by section), so
what is shown is what runs here: each file's ``tasks`` part is imported before an embedded
worker starts (Redis broker and result backend, the store on PostgreSQL), then its
``caller`` part runs and asserts what the page says. Only URLs are replaced, and the app
gets its own tables and queue.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import pytest
from celery import _state
from celery.contrib.testing.worker import start_worker

from tests.support import ROOT, require, unique

PATTERNS = ROOT / "docs" / "patterns"
PAGE = ROOT / "docs" / "celery-patterns.md"
#: The URLs the docs write.
DOC_REDIS = "redis://127.0.0.1:6379/0"
DOC_DATABASE = "postgresql+psycopg://app@db/shop"
CALLER = "# --8<-- [start:caller]"
#: The patterns run by the shared worker, in the page's order.
ON_A_WORKER = [
    "results",
    "failures",
    "canvas",
    "retries",
    "policies",
    "eager",
    "delays",
    "inspection",
]


def source(name: str, redis: str, database: str) -> str:
    text = (PATTERNS / f"{name}.py").read_text()
    for ours, theirs in ((redis, DOC_REDIS), (database, DOC_DATABASE)):
        text = text.replace(theirs, ours)
    return text


def test_the_page_shows_every_pattern_file() -> None:
    page = PAGE.read_text()
    for path in PATTERNS.glob("*.py"):
        sections = ["tasks", "caller"] if CALLER in path.read_text() else [""]
        for section in sections:
            include = f"docs/patterns/{path.name}" + (f":{section}" if section else "")
            assert f'--8<-- "{include}"' in page, f"the page does not include {include}"


@pytest.fixture(scope="module")
def patterns() -> Iterator[tuple[Any, dict[str, tuple[str, dict[str, Any]]]]]:
    """The docs' app on a worker, with every pattern's tasks; each caller and its names."""
    redis, database = require("redis"), require("postgresql")
    prefix = unique("pat")
    app_source = source("app", redis, database) + (
        f"app.conf.update(reliable_table_prefix={prefix!r}, task_default_queue='q_{prefix}',"
        " worker_hijack_root_logger=False)\n"
    )
    module = type(sys)("app")
    finalizers = set(_state._on_app_finalizers)
    sys.modules["app"] = module
    try:
        exec(compile(app_source, str(PATTERNS / "app.py"), "exec"), module.__dict__)
        module.reliable.create_schema()
        callers = {}
        for name in ON_A_WORKER:
            head, caller = source(name, redis, database).split(CALLER)
            names: dict[str, Any] = {"__name__": f"patterns.{name}"}
            exec(compile(head, str(PATTERNS / f"{name}.py"), "exec"), names)
            callers[name] = (caller, names)
        with start_worker(module.app, pool="threads", concurrency=2, perform_ping_check=False):
            yield module.app, callers
        module.reliable.database.dispose()
    finally:
        del sys.modules["app"]
        _state._on_app_finalizers.intersection_update(finalizers)


@pytest.mark.parametrize("name", ON_A_WORKER)
def test_the_pattern_does_what_the_page_says(
    patterns: tuple[Any, dict[str, tuple[str, dict[str, Any]]]], name: str
) -> None:
    _, callers = patterns
    caller, names = callers[name]
    exec(compile(caller, str(PATTERNS / f"{name}.py"), "exec"), names)


def test_task_cls_makes_the_apps_tasks_reliable_and_celerys_own_plain() -> None:
    names: dict[str, Any] = {"__name__": "patterns.task_cls"}
    code = source("task_cls", DOC_REDIS, "sqlite://")
    finalizers = set(_state._on_app_finalizers)
    try:
        exec(compile(code, str(PATTERNS / "task_cls.py"), "exec"), names)
    finally:
        _state._on_app_finalizers.intersection_update(finalizers)
