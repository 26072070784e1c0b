"""A pytest plugin for a run of Celery's integration tests: ``-p tests.celery_suite.plugin``.

Celery's tests are run unedited. Their conftest builds the app from the fixtures of
``celery.contrib.pytest``: ``celery_config`` (settings), ``celery_parameters`` (arguments of
``Celery(...)``), ``celery_session_app`` (the app of the shared in-process worker) and
``celery_app`` (the app each test sends with). The conftest defines ``celery_config``
itself, so a fixture of ours could not override it; instead this plugin wraps fixture
setup and, in the ``reliable`` variant, adds our settings to the values those fixtures
return: ``task_cls="celery_reliable:ReliableTask"`` makes every task of the app a
ReliableTask, ``Reliable(app)`` installs the extension on both apps, and the store is
created once, for the session app.

Each test's outcome is appended to a JSON-lines file as soon as it is known, so a run
that is interrupted still reports what it measured.
"""

from __future__ import annotations

import json
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest

from celery_reliable import Reliable

VARIANTS = ("plain", "reliable")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("celery_suite", "celery_reliable: Celery's suite on ReliableTask")
    group.addoption("--suite-variant", choices=VARIANTS, default="plain")
    group.addoption("--suite-results", type=Path, help="JSON-lines file of test outcomes")
    group.addoption(
        "--suite-timeout",
        type=float,
        default=None,
        help="seconds per test, replacing Celery's own timeout marks",
    )
    group.addoption("--suite-database-url", help="the reliable store (reliable variant)")
    group.addoption("--suite-table-prefix", help="the store's table prefix (reliable variant)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Give every test the same short timeout, ahead of Celery's ``timeout(300)`` marks.

    A result that never becomes ready makes a test wait for its ``.get()`` timeout (up to
    60 s in test_canvas) or for ever; a short bound keeps a run with many such tests short.
    pytest-timeout reads the closest ``timeout`` mark, so ours goes first.
    """
    seconds = config.getoption("suite_timeout")
    if seconds is not None:
        for item in items:
            item.add_marker(pytest.mark.timeout(seconds), append=False)


@pytest.hookimpl(wrapper=True)
def pytest_fixture_setup(
    fixturedef: pytest.FixtureDef[Any], request: pytest.FixtureRequest
) -> Generator[None, Any, Any]:
    value = yield
    config = request.config
    if config.getoption("suite_variant") == "reliable":
        _make_reliable(fixturedef, config, value)
    return value


def _make_reliable(fixturedef: pytest.FixtureDef[Any], config: pytest.Config, value: Any) -> None:
    """Turn the value of one of celery.contrib.pytest's fixtures into its reliable variant."""
    name = fixturedef.argname
    if name == "celery_config":
        value["reliable_database_url"] = config.getoption("suite_database_url")
        value["reliable_table_prefix"] = config.getoption("suite_table_prefix")
    elif name == "celery_parameters":
        value["task_cls"] = "celery_reliable:ReliableTask"
    elif name == "celery_session_app":
        Reliable(value).create_schema()
    elif name == "celery_app":
        reliable = Reliable(value)
        fixturedef.addfinalizer(lambda: _dispose(reliable))


def _dispose(reliable: Reliable) -> None:
    """Close a per-test app's database pool, if it opened one: a run makes hundreds of apps."""
    database = vars(reliable).get("database")  # a cached property, absent until first used
    if database is not None:
        database.dispose()


class _Outcomes:
    """Folds the setup, call and teardown reports of each test into one outcome."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.current: dict[str, dict[str, Any]] = {}

    @pytest.hookimpl
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        entry = self.current.setdefault(
            report.nodeid, {"nodeid": report.nodeid, "outcome": "passed", "duration": 0.0}
        )
        entry["duration"] = round(entry["duration"] + report.duration, 3)
        if entry["outcome"] == "passed":
            outcome = _outcome(report)
            if outcome != "passed":
                entry["outcome"] = outcome
                entry["message"] = _message(report)
        if report.when == "teardown":
            with self.path.open("a") as out:
                out.write(json.dumps(self.current.pop(report.nodeid)) + "\n")


def _outcome(report: pytest.TestReport) -> str:
    if hasattr(report, "wasxfail"):
        return "xfailed" if report.skipped else "xpassed"
    if report.skipped:
        return "skipped"
    if report.failed:
        return "failed" if report.when == "call" else "error"
    return "passed"


def _message(report: pytest.TestReport) -> str:
    """The exception line pytest shows in its short summary, or the skip/xfail reason."""
    if hasattr(report, "wasxfail"):
        return str(report.wasxfail)
    crash = getattr(report.longrepr, "reprcrash", None)
    if crash is not None:
        return str(crash.message)[:500]
    if isinstance(report.longrepr, tuple):  # a skip: (file, line, reason)
        return str(report.longrepr[2])
    return str(report.longrepr)[-500:]


def pytest_configure(config: pytest.Config) -> None:
    path = config.getoption("suite_results")
    if path is not None:
        config.pluginmanager.register(_Outcomes(path), "celery_suite_outcomes")
