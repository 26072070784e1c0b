"""Every ``reliable_*`` setting, its default and its validation, in one place.

Settings live in ``app.conf`` under the ``reliable_`` prefix, Celery's own convention. The
:class:`Settings` dataclass is the single declaration: its fields name the settings, their
metadata carries the parser and the documentation, and the configuration reference is
generated from it, so the docs cannot drift from the code.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from datetime import timedelta
from typing import Any

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from .durations import parse_duration
from .exceptions import ConfigurationError

PREFIX = "reliable_"
DEFAULT_SQLITE_FILE = "reliable.sqlite3"

Parser = Callable[[Any], Any]


def _database_url(value: Any) -> str:
    if value is None:
        return f"sqlite:///{os.path.join(os.getcwd(), DEFAULT_SQLITE_FILE)}"
    if not isinstance(value, str):
        raise ValueError("must be a SQLAlchemy URL string")
    try:
        make_url(value)
    except ArgumentError as exc:
        raise ValueError(f"{value!r} is not a SQLAlchemy URL") from exc
    return value


def _table_prefix(value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,29}", value):
        raise ValueError("must be a SQL identifier of at most 30 letters, digits or underscores")
    return value


def _positive_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError("must be a whole number of at least 1")
    return value


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("must be True or False")
    return value


def _mapping(value: Any) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError("must be a mapping of keyword arguments")
    return dict(value)


def _setting(default: Any, parse: Parser, doc: str) -> Any:
    return field(default=default, metadata={"parse": parse, "doc": doc})


@dataclass(frozen=True)
class Settings:
    """The validated ``reliable_*`` settings of one Celery app."""

    database_url: str = _setting(
        None,
        _database_url,
        "SQLAlchemy URL of the reliable store. PostgreSQL "
        "(`postgresql+psycopg://...`) in production; MySQL/MariaDB "
        "(`mysql+pymysql://...`) works too. Unset: a SQLite file `reliable.sqlite3` "
        "in the working directory, safe for one worker host.",
    )
    table_prefix: str = _setting(
        "reliable_", _table_prefix, "Prefix of every table (and of the migration version table)."
    )
    engine_options: Mapping[str, Any] = _setting(
        None, _mapping, "Extra keyword arguments for `sqlalchemy.create_engine` (pool sizes, ...)."
    )
    max_attempts: int = _setting(
        10,
        _positive_int,
        "Runs a message may have under one handler key, crashes included, before it is "
        "quarantined as poisoned. Counted in the store, so it holds on Redis too. Keep it "
        "above every retry budget.",
    )
    stuck_threshold: timedelta = _setting(
        timedelta(minutes=5),
        parse_duration,
        "How long a claim may stay in processing before another delivery may take it over "
        "without a redelivery flag from the broker (lease length).",
    )
    store_results: bool = _setting(
        True,
        _boolean,
        "Keep each task's return value (JSON) with its completion mark, so that a duplicate "
        "delivery can finish with the original result.",
    )

    outbox_max_payload_bytes: int = _setting(
        1024 * 1024,
        _positive_int,
        "Largest serialized message `outbox.enqueue()` accepts; larger ones are refused before "
        "anything is written (store a reference to big data instead).",
    )
    outbox_allow_pickle: bool = _setting(
        False,
        _boolean,
        "Let `outbox.enqueue()` store pickle-serialized messages. Off: pickle is refused, since "
        "whoever can write the outbox table could then run code on every worker.",
    )
    outbox_max_attempts: int = _setting(
        10,
        _positive_int,
        "Publish attempts of one outbox row before it is poisoned (kept, never deleted "
        "automatically). A broker that cannot be reached does not use up attempts.",
    )
    relay_in_worker: bool = _setting(
        False,
        _boolean,
        "Run the relay inside every `celery worker` (a thread of its main process) instead of "
        "as `celery -A app reliable relay`. Several relays may run at once.",
    )
    relay_batch_size: int = _setting(
        500, _positive_int, "Outbox rows a relay claims and publishes per batch."
    )
    relay_idle_interval: timedelta = _setting(
        timedelta(seconds=1),
        parse_duration,
        "How long a relay with nothing to publish waits before looking again.",
    )

    @classmethod
    def from_conf(cls, conf: Mapping[str, Any]) -> Settings:
        """Read and validate every ``reliable_*`` key of ``conf``.

        Raises ConfigurationError naming the key on an unknown key or a bad value, so a typo
        fails the worker at start-up instead of silently running with a default.
        """
        known = {PREFIX + f.name: f for f in fields(cls)}
        unknown = sorted(k for k in conf if k.startswith(PREFIX) and k not in known)
        if unknown:
            raise ConfigurationError(
                f"unknown setting {unknown[0]!r}; known settings: {', '.join(sorted(known))}"
            )
        values: dict[str, Any] = {}
        for key, f in known.items():
            raw = conf.get(key, f.default)
            try:
                values[f.name] = f.metadata["parse"](raw)
            except ValueError as exc:
                raise ConfigurationError(f"setting {key!r}: {exc} (got {raw!r})") from exc
        return cls(**values)


def documented_settings() -> list[tuple[str, Any, str]]:
    """(key, default, doc) of every setting, for the generated configuration reference."""
    return [(PREFIX + f.name, f.default, f.metadata["doc"]) for f in fields(Settings)]
