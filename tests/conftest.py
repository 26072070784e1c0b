"""Fixtures shared by every tier. Service fixtures skip locally and fail in CI when absent."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .support import database_url as _database_url
from .support import drop_store, require, unique


@pytest.fixture(params=["sqlite", "postgresql", "mysql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The store URL, once per database the library supports."""
    return _database_url(request.param, tmp_path)


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
