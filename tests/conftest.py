"""Fixtures shared by every tier. Service fixtures skip locally and fail in CI when absent."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from celery_reliable.testing import drop_store

from .support import database_url as _database_url
from .support import require, unique

#: The public chaos kit's fixtures (process_group, kill_loop, fault_proxy, chaos_seed).
pytest_plugins = ["celery_reliable.testing.plugin"]


@pytest.fixture(params=["sqlite", "postgresql", "mysql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The store URL, once per database the library supports."""
    return _database_url(request.param, tmp_path)


@pytest.fixture(scope="module", params=["sqlite", "postgresql", "mysql"])
def module_db(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, str]]:
    """(store URL, table prefix) shared by one module's tests, once per database."""
    url = _database_url(request.param, tmp_path_factory.mktemp(request.param))
    prefix = unique()
    yield url, prefix
    drop_store(url, prefix)


@pytest.fixture(params=["redis", "rabbitmq"])
def broker_url(request: pytest.FixtureRequest) -> str:
    """A real broker URL, once per broker."""
    return require(request.param)


@pytest.fixture
def table_prefix(db_url: str) -> Iterator[str]:
    """A fresh table prefix per test, so tests share databases but never rows; dropped after."""
    prefix = unique()
    yield prefix
    drop_store(db_url, prefix)
