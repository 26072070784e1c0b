"""Every ``reliable_*`` setting, its default and its validation, in one place.

Settings live in ``app.conf`` under the ``reliable_`` prefix, Celery's own convention. The
:class:`Settings` dataclass is the single declaration: its fields name the settings, their
metadata carries the parser and the documentation, and the configuration reference is
generated from it, so the docs cannot drift from the code.
"""

from __future__ import annotations

import difflib
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


def _optional_url(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or "://" not in value:
        raise ValueError("must be a URL such as 'redis://127.0.0.1:6379/0', or None")
    return value


def _non_negative_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError("must be a whole number of at least 0")
    return value


def _dotted_names(value: Any) -> tuple[str, ...]:
    """Exception classes or their dotted import paths; resolved when first used."""
    if value is None:
        return ()
    if isinstance(value, (str, type)) or not isinstance(value, (list, tuple, set, frozenset)):
        raise ValueError("must be a list of exception classes or dotted paths")
    names = []
    for item in value:
        if isinstance(item, type) and issubclass(item, BaseException):
            names.append(f"{item.__module__}.{item.__qualname__}")
        elif isinstance(item, str) and re.fullmatch(r"[A-Za-z_][\w.]*\.[A-Za-z_]\w*", item):
            names.append(item)
        else:
            raise ValueError(f"{item!r} is neither an exception class nor a dotted path")
    return tuple(names)


def _lock_provider(value: Any) -> str:
    if value not in ("auto", "redis", "postgresql", "file"):
        raise ValueError("must be 'auto', 'redis', 'postgresql' or 'file'")
    return str(value)


def _optional_path(value: Any) -> str | None:
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise ValueError("must be a directory path, or None")
    return value


def _optional_duration(value: Any) -> timedelta | None:
    return None if value is None else parse_duration(value)


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
        None,
        _mapping,
        "Extra keyword arguments for `sqlalchemy.create_engine` (pool sizes, ...). On "
        "PostgreSQL with psycopg each worker process also keeps up to two connections of "
        "its own, outside the pools, for the claim and the completion mark, which run as "
        "prepared statements; `{'connect_args': {'prepare_threshold': None}}` turns "
        "preparing off (a pooler that cannot keep prepared statements).",
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
        "How long a claim's lease may go unrenewed before a delivery without the broker's "
        "redelivered flag takes it over (lease length). A running body renews its lease "
        "every third of this, at most every 10 s; a flagged copy takes over after 2.5 "
        "renewal intervals unrenewed (25 s by default).",
    )
    store_results: bool = _setting(
        True,
        _boolean,
        "Keep each task's return value (JSON) with its completion mark, so that a duplicate "
        "delivery can finish with the original result. On MySQL/MariaDB a result larger than "
        "one statement can carry (about half of max_allowed_packet) is not kept.",
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
    relay_single: bool = _setting(
        False,
        _boolean,
        "Let only one relay publish at a time (the others stand by, under a distributed "
        "lock): for brokers or keys where strict global order matters more than throughput.",
    )
    relay_batch_size: int = _setting(
        500, _positive_int, "Outbox rows a relay claims and publishes per batch."
    )
    relay_idle_interval: timedelta = _setting(
        timedelta(seconds=1),
        parse_duration,
        "How long a relay with nothing to publish waits before looking again.",
    )

    redis_url: str | None = _setting(
        None,
        _optional_url,
        "Redis URL for state shared by every worker: circuit breakers (and, later, locks). "
        "Unset: each worker process keeps its own breaker state.",
    )
    retry_max_broker_delay: timedelta = _setting(
        timedelta(seconds=60),
        parse_duration,
        "Retries due within this delay wait on the broker (Celery's countdown); longer ones "
        "are held in the store and published by the relay when due, so no retry sits in a "
        "Redis queue past its visibility timeout. Run a relay when retries can be longer.",
    )
    transient_exceptions: tuple[str, ...] = _setting(
        None,
        _dotted_names,
        "Exceptions (classes or dotted paths) retried for every ReliableTask, in addition to "
        "the built-in transient ones (connection errors, timeouts, serialization failures "
        "and deadlocks, ...); retried up to `reliable_max_attempts` runs.",
    )
    poison_exceptions: tuple[str, ...] = _setting(
        None,
        _dotted_names,
        "Exceptions (classes or dotted paths) that dead-letter a message at once, with reason "
        "`PoisonMessage`, for every ReliableTask.",
    )
    alert_threshold: int = _setting(
        10,
        _non_negative_int,
        "More dead letters than this within `reliable_alert_window` log at ERROR and send "
        "the `celery_reliable.signals.dead_letter_alert` signal (0: on every dead letter).",
    )
    alert_window: timedelta = _setting(
        timedelta(minutes=5), parse_duration, "The window `reliable_alert_threshold` counts in."
    )

    outbox_retention: timedelta | None = _setting(
        timedelta(days=7),
        _optional_duration,
        "Sent outbox rows older than this are deleted by the cleanup job (None: kept). "
        "Poisoned rows are never deleted automatically.",
    )
    inbox_retention: timedelta | None = _setting(
        timedelta(days=30),
        _optional_duration,
        "Completed inbox marks older than this are deleted by the cleanup job (None: kept). "
        "A duplicate arriving after that runs again: keep it longer than any redelivery, "
        "replay or producer retry can take. Poisoned marks are never deleted automatically.",
    )
    dead_letter_retention: timedelta | None = _setting(
        timedelta(days=30),
        _optional_duration,
        "Dead letters older than this are deleted by the cleanup job (None: kept until "
        "`dlq purge`).",
    )
    outbox_redeliver_unseen_after: timedelta | None = _setting(
        None,
        _optional_duration,
        "Stuck recovery publishes an outbox message to a ReliableTask again when no inbox "
        "has seen its message id this long after it was sent (the inbox absorbs the copy "
        "if the first was only slow). This recovers messages a broker lost after accepting "
        "them, such as kombu's Redis transport when a worker dies or its link drops mid "
        "BRPOP. Keep it well above your longest queue wait, and below "
        "`reliable_inbox_retention` (refused otherwise): a message older than the inbox "
        "retention is never published again, since its completed mark may already be gone "
        "and the copy would run a second time. None: off.",
    )
    outbox_max_redeliveries: int = _setting(
        3,
        _positive_int,
        "How many times stuck recovery publishes one unseen outbox message again before it "
        "gives up on it (logged at ERROR; the row stays `sent`). Messages a worker "
        "dead-lettered (expired, unknown task, ...) are never published again: no inbox will "
        "ever record them.",
    )
    cleanup_batch_size: int = _setting(
        10_000, _positive_int, "Rows the cleanup job deletes per transaction."
    )
    cleanup_interval: timedelta | None = _setting(
        timedelta(hours=1),
        _optional_duration,
        "How often `celery beat` runs the retention cleanup (None: not scheduled).",
    )
    recovery_interval: timedelta | None = _setting(
        timedelta(minutes=1),
        _optional_duration,
        "How often `celery beat` runs stuck-message recovery (None: not scheduled).",
    )
    maintenance_first_run_waits: bool = _setting(
        False,
        _boolean,
        "Whether beat waits a full interval before a maintenance job's first run (False: "
        "it runs as soon as beat starts).",
    )
    unhealthy_after: timedelta = _setting(
        timedelta(minutes=2),
        parse_duration,
        "`reliable health --ready` fails when this host's relay loop has not completed a cycle "
        "for this long, or the outbox's oldest due row has waited this long.",
    )
    dead_letter_degraded_depth: int = _setting(
        100,
        _non_negative_int,
        "`reliable health --ready` reports degraded (still healthy, with a warning) when more "
        "dead letters than this wait for review (not replayed).",
    )
    health_directory: str | None = _setting(
        None,
        _optional_path,
        "Where relays leave their heartbeat file for `reliable health --live` on the same host. "
        "Unset: the system's temporary directory.",
    )
    lock_provider: str = _setting(
        "auto",
        _lock_provider,
        "Where maintenance jobs take their distributed locks: `redis` (a lease renewed while "
        "the job runs; needs `reliable_redis_url`), `postgresql` (advisory locks on the "
        "store), `file` (one host only). `auto`: redis when `reliable_redis_url` is set, "
        "else postgresql when the store is PostgreSQL, else file.",
    )
    lock_namespace: str | None = _setting(
        None,
        _optional_path,
        "First part of every lock name (`<namespace>:<job>`). Unset: `<app name>:<table "
        "prefix>`, so two apps or two stores never block each other. Set it to share locks "
        "between apps that must not run a job at the same time.",
    )
    lock_directory: str | None = _setting(
        None,
        _optional_path,
        "Directory of the `file` lock provider's lock files. Unset: a `celery-reliable-locks` "
        "directory in the system's temporary directory.",
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
            raise ConfigurationError(_unknown_setting(unknown[0], sorted(known)))
        values: dict[str, Any] = {}
        for key, f in known.items():
            raw = conf.get(key, f.default)
            try:
                values[f.name] = f.metadata["parse"](raw)
            except ValueError as exc:
                raise ConfigurationError(f"setting {key!r}: {exc} (got {raw!r})") from exc
        settings = cls(**values)
        _check_combinations(settings)
        return settings


def _check_combinations(settings: Settings) -> None:
    """Refuse settings that are valid one by one but contradict each other.

    Redelivery of unseen outbox messages skips messages older than the inbox retention
    (their completed mark may have been deleted, and a copy would run again). Waiting
    longer than that retention before redelivering would therefore never redeliver
    anything: an operator who set both meant something else, so say so at start-up.
    """
    unseen, retention = settings.outbox_redeliver_unseen_after, settings.inbox_retention
    if unseen is not None and retention is not None and unseen >= retention:
        raise ConfigurationError(
            f"setting '{PREFIX}outbox_redeliver_unseen_after' ({unseen}) must be shorter than "
            f"'{PREFIX}inbox_retention' ({retention}): a message is only published again "
            "while its inbox mark, if any, is still kept"
        )


def _unknown_setting(key: str, known: list[str]) -> str:
    """Name the likely intended setting for a typo; list them all when none is close."""
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.75)
    if close:
        return f"unknown setting {key!r}; did you mean {close[0]!r}?"
    return f"unknown setting {key!r}; known settings: {', '.join(known)}"


def documented_settings() -> list[tuple[str, Any, str]]:
    """(key, default, doc) of every setting, for the generated configuration reference."""
    return [(PREFIX + f.name, f.default, f.metadata["doc"]) for f in fields(Settings)]
