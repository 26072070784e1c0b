"""``Reliable(app)``: the composition root that wires settings, store and inbox into an app.

Nothing below this module reaches back up: tasks ask ``Reliable.of(app)`` for the inbox,
the inbox talks to the store port, the store to the database.
"""

from __future__ import annotations

import logging
import threading
from functools import cached_property
from typing import TYPE_CHECKING, Any

from celery import Celery, bootsteps
from sqlalchemy.exc import DBAPIError

from .exceptions import ConfigurationError
from .inbox import Inbox
from .outbox import Outbox
from .relay import Relay
from .settings import Settings
from .store import Database, SqlStore, build_tables, migrate
from .store.outbox_rows import OutboxRows
from .store.tables import KEY_LENGTH, Tables

if TYPE_CHECKING:
    from .task import ReliableTask

_ATTRIBUTE = "_celery_reliable"
logger = logging.getLogger(__name__)


class Reliable:
    """The celery_reliable extension of one Celery app.

    Settings are read lazily, on first use, so ``app.conf`` may be filled in after
    ``Reliable(app)``; a worker validates them (and the handler keys) while it starts.
    """

    def __init__(self, app: Celery) -> None:
        if getattr(app, _ATTRIBUTE, None) is not None:
            raise ConfigurationError(
                f"Reliable(app) was already called for app {app.main!r}; use Reliable.of(app)"
            )
        self.app = app
        self._checked = False
        setattr(app, _ATTRIBUTE, self)
        app.steps["worker"].add(_CheckAtStartup)
        app.steps["worker"].add(_RelayInWorker)

    @classmethod
    def of(cls, app: Celery) -> Reliable:
        """The extension created by ``Reliable(app)`` for ``app``."""
        reliable = getattr(app, _ATTRIBUTE, None)
        if reliable is None:
            raise ConfigurationError(
                f"app {app.main!r} has no celery_reliable extension: call Reliable(app) "
                "where the app is created"
            )
        return reliable  # type: ignore[no-any-return]

    @cached_property
    def settings(self) -> Settings:
        """The validated ``reliable_*`` settings."""
        return Settings.from_conf(self.app.conf)

    @cached_property
    def database(self) -> Database:
        return Database(self.settings.database_url, self.settings.engine_options)

    @cached_property
    def tables(self) -> Tables:
        return build_tables(self.settings.table_prefix)

    @cached_property
    def store(self) -> SqlStore:
        return SqlStore(self.database, self.tables)

    @cached_property
    def inbox(self) -> Inbox:
        settings = self.settings
        return Inbox(
            self.store,
            max_attempts=settings.max_attempts,
            stuck_threshold=settings.stuck_threshold,
            store_results=settings.store_results,
        )

    @cached_property
    def outbox(self) -> Outbox:
        """``reliable.outbox.enqueue(session, task.s(...))``: see :class:`Outbox`."""
        return Outbox(self.app, self.tables, self.settings)

    @cached_property
    def relay(self) -> Relay:
        """Publishes committed outbox rows; run by ``celery -A app reliable relay``."""
        return Relay(self.app, OutboxRows(self.database, self.tables), self.settings, self.tables)

    def create_schema(self) -> None:
        """Apply the shipped migrations (same as ``celery -A app reliable db upgrade``)."""
        migrate.upgrade(self.database, self.tables)

    def check(self) -> None:
        """Validate settings and handler keys; raise ConfigurationError naming the problem.

        Also builds the inbox (objects only: engines connect lazily, per process), so that
        pool threads never race to build two of them.
        """
        if self._checked:
            return
        _ = self.inbox
        self._check_handler_keys()
        self._checked = True

    def check_schema(self) -> None:
        """Refuse a store whose schema is behind the package (a worker would defer everything).

        An unreachable store is not refused: the worker starts and defers messages until
        the store is back, as it would if the store went away later.
        """
        try:
            current = migrate.current(self.database, self.tables)
        except DBAPIError as exc:
            logger.warning("reliable store unreachable at start-up: %s", exc)
            return
        head = migrate.head(self.database, self.tables)
        if current != head:
            url = self.database.url.render_as_string(hide_password=True)
            raise ConfigurationError(
                f"the reliable store {url} is at schema revision {current or 'none'}, this "
                f"version needs {head}: run `celery -A {self.app.main} reliable db upgrade`"
            )

    def _check_handler_keys(self) -> None:
        from .task import ReliableTask

        owners: dict[str, str] = {}
        for task in list(self.app.tasks.values()):
            if not isinstance(task, ReliableTask):
                continue
            for key in handler_keys_of(task):
                other = owners.setdefault(key, task.name)
                if other != task.name:
                    raise ConfigurationError(
                        f"handler key {key!r} is claimed by both {other!r} and {task.name!r}; "
                        "give each task its own handler_key"
                    )

    def __repr__(self) -> str:
        return f"<Reliable app={self.app.main!r}>"


def handler_keys_of(task: ReliableTask) -> tuple[str, ...]:
    """The task's handler key followed by its legacy keys, validated."""
    key = task.handler_key if task.handler_key is not None else task.name
    legacy = task.legacy_handler_keys
    if isinstance(legacy, str) or not isinstance(legacy, (tuple, list)):
        raise ConfigurationError(
            f"task {task.name!r}: legacy_handler_keys must be a tuple of strings, got {legacy!r}"
        )
    keys = (key, *legacy)
    for value in keys:
        if not isinstance(value, str) or not value.strip() or len(value) > KEY_LENGTH:
            raise ConfigurationError(
                f"task {task.name!r}: handler key {value!r} must be a non-empty string of at "
                f"most {KEY_LENGTH} characters"
            )
    if len(set(keys)) != len(keys):
        raise ConfigurationError(f"task {task.name!r}: handler keys repeat: {keys!r}")
    return keys


class _RelayInWorker(bootsteps.StartStopStep):  # type: ignore[misc]
    """The relay as a thread of the worker's main process (``reliable_relay_in_worker``).

    It starts after the pool, so prefork children are forked before the thread exists, and
    on shutdown it finishes its batch before the worker exits.
    """

    label = "celery_reliable relay"
    requires = ("celery.worker.components:Pool",)

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        self.enabled = Reliable.of(worker.app).settings.relay_in_worker
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        super().__init__(worker, **kwargs)

    def start(self, worker: Any) -> None:
        relay = Reliable.of(worker.app).relay
        self._thread = threading.Thread(
            target=relay.run, args=(self._stop,), name="celery-reliable-relay", daemon=True
        )
        self._thread.start()

    def stop(self, worker: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)


class _CheckAtStartup(bootsteps.StartStopStep):  # type: ignore[misc]
    """Fail ``celery worker`` at start-up on a bad setting or a handler-key clash."""

    label = "celery_reliable check"

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        reliable = Reliable.of(worker.app)
        reliable.check()
        reliable.check_schema()
        super().__init__(worker, **kwargs)
