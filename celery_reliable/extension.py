"""``Reliable(app)``: the composition root that wires settings, store and inbox into an app.

Nothing below this module reaches back up: :meth:`Reliable.check` hands each ReliableTask
the delivery pipeline (built here with its collaborators) and the task's resolved options;
the pipeline talks to the inbox, the inbox to the store port, the store to the database.
"""

from __future__ import annotations

import logging
import threading
from functools import cached_property
from typing import TYPE_CHECKING, Any

import click
from celery import Celery, bootsteps
from celery.signals import task_received
from sqlalchemy.exc import DBAPIError

from . import schedule
from .admin import Admin
from .classify import Classifier
from .dead_letters import DeadLetters
from .delivery import Binding, Pipeline, TaskOptions, check_unique_keys, resolve_options
from .delivery.lease import renewal_grace
from .exceptions import ConfigurationError
from .health import Health
from .inbox import Inbox
from .intake import DeadLetterIntake
from .maintenance import LOCK_TTL, Maintenance
from .metrics import Metrics
from .outbox import Outbox
from .poison import PoisonDetector, as_detector
from .relay import Relay, RelayHooks
from .retry import RetryPolicies
from .settings import Settings
from .store import Database, SqlStore, build_tables, inbox_store, migrate
from .store.dead_letter_rows import SqlDeadLetterRows
from .store.outbox_rows import OutboxRows
from .store.tables import Tables
from .task import EXTENSION_ATTRIBUTE, ReliableTask

if TYPE_CHECKING:
    from .breakers import Breakers
    from .locks import LockProvider

_ATTRIBUTE = EXTENSION_ATTRIBUTE
logger = logging.getLogger(__name__)


def app_argument(app: Celery) -> str:
    """The ``-A`` value for a hint: the one this ``celery`` command was given (such as
    ``workers.shop``), which need not be the app's name (``shop``); else the app's name."""
    ctx = click.get_current_context(silent=True)
    typed = ctx.find_root().params.get("app") if ctx is not None else None
    return typed if isinstance(typed, str) and typed else app.main or "yourapp"


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
        #: ``reliable.retry_policies["name"] = RetryPolicy...``; "default" is used by tasks
        #: that name no policy.
        self.retry_policies = RetryPolicies()
        #: Detectors added with :meth:`add_poison_detector`, consulted for every ReliableTask.
        self.poison_detectors: list[PoisonDetector] = []
        setattr(app, _ATTRIBUTE, self)
        app.steps["worker"].add(_CheckAtStartup)
        app.steps["worker"].add(_RelayInWorker)
        app.steps["consumer"].add(_ReleaseOnColdShutdown)
        app.steps["consumer"].add(DeadLetterIntake)
        schedule.install(app, self)
        task_received.connect(self._on_received, weak=False)

    def _on_received(self, sender: Any = None, request: Any = None, **_: Any) -> None:
        """A worker received a message of this app: record how long it took to arrive."""
        if request is None or getattr(request, "app", None) is not self.app:
            return
        try:
            self.metrics.record_received(request.task_name, request.request_dict or {})
        except Exception:  # metrics never break message handling
            logger.debug("receive lag not recorded", exc_info=True)

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
        return inbox_store(self.database, self.tables)

    @cached_property
    def inbox(self) -> Inbox:
        settings = self.settings
        return Inbox(
            self.store,
            max_attempts=settings.max_attempts,
            stuck_threshold=settings.stuck_threshold,
            renewal_grace=renewal_grace(settings.stuck_threshold),
            store_results=settings.store_results,
        )

    @cached_property
    def outbox(self) -> Outbox:
        """``reliable.outbox.enqueue(session, task.s(...))``: see :class:`Outbox`."""
        return Outbox(self.app, self.tables, self.settings)

    @cached_property
    def relay(self) -> Relay:
        """Publishes committed outbox rows; run by ``celery -A app reliable relay``."""
        metrics, heartbeat = self.metrics, self.health.relay_heartbeat

        def batch(claimed: int, sent: int, seconds: float) -> None:
            metrics.outbox_batch_size.record(claimed)
            metrics.outbox_duration.record(seconds)
            metrics.outbox_processed.add(sent, {"status": "sent"})
            if claimed > sent:
                metrics.outbox_processed.add(claimed - sent, {"status": "failed"})

        hooks = RelayHooks(
            batch=batch,
            poisoned=lambda: metrics.outbox_poisoned.add(1),
            cycle=heartbeat.beat,
            stopped=heartbeat.clear,
            died=heartbeat.dead,
            lock=(
                (lambda: self.locks.lock(self.maintenance.lock_name("relay"), ttl=LOCK_TTL))
                if self.settings.relay_single
                else None
            ),
        )
        return Relay(
            self.app, OutboxRows(self.database, self.tables), self.settings, self.tables, hooks
        )

    @cached_property
    def dead_letters(self) -> DeadLetters:
        """``reliable.dead_letters``: query, replay and purge dead-lettered messages."""
        rows = SqlDeadLetterRows(self.database, self.tables, self.maintenance.delete_in_batches)
        return DeadLetters(
            self.app,
            rows,
            inbox_store=self.store,
            outbox=self.outbox,
            settings=self.settings,
            dead_lettered=self.metrics.dead_letters,
        )

    @cached_property
    def breakers(self) -> Breakers:
        """``reliable.breakers``: circuit breakers, shared through ``reliable_redis_url``."""
        from .breakers import Breakers

        breakers = Breakers(self.settings.redis_url, namespace=self.settings.table_prefix)
        transitions = self.metrics.breaker_transitions
        breakers.add_listener(
            lambda name, old, new: transitions.add(1, {"name": name, "from": old, "to": new})
        )
        return breakers

    @cached_property
    def admin(self) -> Admin:
        """Outbox and inbox stats, poisoned rows, manual retries (the CLI's backend)."""
        return Admin(self.database, self.tables, self.store, self.metrics)

    @cached_property
    def metrics(self) -> Metrics:
        """OpenTelemetry instruments (meter ``celery_reliable``; no-ops without an SDK)."""
        return Metrics(
            self.app.main,
            outbox_stats=lambda: self.admin.outbox_stats(),
            inbox_stats=lambda: self.admin.inbox_stats(),
            dead_letter_depth=lambda: self.dead_letters.depth(),
        )

    @cached_property
    def health(self) -> Health:
        """Readiness and liveness checks (``celery reliable health``)."""
        return Health(
            self.app.main,
            self.settings,
            self.database,
            broker=self.app.connection_for_write,
            outbox_stats=self.admin.outbox_stats,
            dead_letter_depth=lambda: self.dead_letters.depth(),
        )

    @cached_property
    def maintenance(self) -> Maintenance:
        """Retention cleanup and stuck recovery (beat runs them; so does the CLI)."""
        app = self.app
        return Maintenance(
            app.main,
            self.settings,
            self.database,
            self.tables,
            locks=lambda: self.locks,
            reliable_tasks=lambda: [n for n, t in app.tasks.items() if isinstance(t, ReliableTask)],
        )

    @cached_property
    def locks(self) -> LockProvider:
        """Distributed locks for maintenance jobs (``reliable_lock_provider``)."""
        from .locks import build_lock_provider

        provider = build_lock_provider(self.settings, self.database)
        counters = {
            "acquisition_failure": self.metrics.lock_failures,
            "lost": self.metrics.locks_lost,
        }
        provider.add_listener(lambda event, name: counters[event].add(1, {"lock": name}))
        return provider

    @cached_property
    def classifier(self) -> Classifier:
        """Transient and poison exceptions declared globally (settings) plus the built-ins."""
        settings = self.settings
        return Classifier(settings.transient_exceptions, settings.poison_exceptions)

    def add_poison_detector(self, detector: Any) -> PoisonDetector:
        """Consult ``detector`` (a callable or a detector object) for every ReliableTask.

        It gets a :class:`celery_reliable.poison.FailureContext` and returns a
        :class:`celery_reliable.poison.Verdict` (dead-letter the message) or None.
        """
        found = as_detector(detector)
        self.poison_detectors.append(found)
        return found

    def create_schema(self) -> None:
        """Apply the shipped migrations (same as ``celery -A app reliable db upgrade``)."""
        migrate.upgrade(self.database, self.tables)

    @cached_property
    def pipeline(self) -> Pipeline:
        """Delivers the messages of this app's ReliableTasks (bound to each by :meth:`check`)."""
        return Pipeline(
            inbox=self.inbox,
            store=self.store,
            database=self.database,
            outbox=self.outbox,
            dead_letters=self.dead_letters,
            breakers=self.breakers,
            classifier=self.classifier,
            poison_detectors=self.poison_detectors,
            metrics=self.metrics,
            settings=self.settings,
        )

    def check(self) -> None:
        """Validate settings, handler keys and task options; raise ConfigurationError naming
        the problem. Then bind every ReliableTask to the pipeline with its resolved options,
        so that no delivery resolves or validates them again.

        Also builds the pipeline and what it uses (objects only: engines connect lazily, per
        process), so that pool threads never race to build two of them.
        """
        if self._checked:
            return
        pipeline = self.pipeline
        tasks = [task for task in list(self.app.tasks.values()) if isinstance(task, ReliableTask)]
        options = [self._options_of(task) for task in tasks]
        check_unique_keys(options)
        for task, resolved in zip(tasks, options, strict=True):
            task.use_reliable_binding(Binding(pipeline, resolved))
        self._checked = True

    def bind(self, task: ReliableTask) -> Binding:
        """Bind ``task`` on its first delivery when no worker start-up did (an eager run, or
        a task registered after :meth:`check`)."""
        self.check()
        binding = Binding(self.pipeline, self._options_of(task))
        task.use_reliable_binding(binding)
        return binding

    def _options_of(self, task: ReliableTask) -> TaskOptions:
        return resolve_options(task, retry_policies=self.retry_policies, breakers=self.breakers)

    def check_schema(self) -> None:
        """Refuse a store whose schema is behind the package (a worker would defer everything).

        A store already migrated by a newer release is accepted: during a rolling
        deployment the schema is upgraded first, and old workers must keep starting until
        they are replaced (migrations only add, see docs/deployment.md). An unreachable
        store is not refused either: the worker starts and defers messages until the store
        is back, as it would if the store went away later.
        """
        try:
            current = migrate.current(self.database, self.tables)
        except DBAPIError as exc:
            logger.warning("reliable store unreachable at start-up: %s", exc)
            return
        head = migrate.head(self.database, self.tables)
        if current is not None and not migrate.ships(self.database, self.tables, current):
            logger.warning(
                "reliable store at schema revision %s, newer than this version's %s: "
                "starting anyway (a rolling deployment in progress?)",
                current,
                head,
            )
        elif current != head:
            url = self.database.url.render_as_string(hide_password=True)
            upgrade = f"celery -A {app_argument(self.app)} reliable db upgrade"
            raise ConfigurationError(
                f"the reliable store {url} is at schema revision {current or 'none'}, this "
                f"version needs {head}: run `{upgrade}`"
            )

    def __repr__(self) -> str:
        return f"<Reliable app={self.app.main!r}>"


class _WorkerRefused(click.ClickException):
    """``celery worker`` refusing to start: click prints the one line, ``Error: ...``, and
    exits with the code ``celery reliable`` would use (2 for the app's settings or tasks,
    3 for the store's schema), not a 50-line traceback that ends with it."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class _CheckAtStartup(bootsteps.StartStopStep):  # type: ignore[misc]
    """Fail ``celery worker`` at start-up on a bad setting, a handler-key clash or a store
    whose schema is behind.

    Under the ``celery worker`` command the failure is one line and an exit code; a worker
    started from code (``start_worker``, ``app.Worker``) gets the ConfigurationError.
    """

    label = "celery_reliable check"

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        reliable = Reliable.of(worker.app)
        for check, exit_code in ((reliable.check, 2), (reliable.check_schema, 3)):
            try:
                check()
            except ConfigurationError as exc:
                if click.get_current_context(silent=True) is None:
                    raise
                raise _WorkerRefused(str(exc), exit_code) from None
        super().__init__(worker, **kwargs)


class _RelayInWorker(bootsteps.StartStopStep):  # type: ignore[misc]
    """The relay as a thread of the worker's main process (``reliable_relay_in_worker``).

    It starts after the pool, so prefork children are forked before the thread exists, and
    on shutdown it finishes its batch before the worker exits.
    """

    label = "celery_reliable relay"
    # After the check: this step reads a setting, which must not fail before the check
    # says what is wrong in one line.
    requires = (_CheckAtStartup, "celery.worker.components:Pool")

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


class _ReleaseOnColdShutdown(bootsteps.StartStopStep):  # type: ignore[misc]
    """On a cold shutdown, hand back the claims of the runs it kills, uncounted.

    A warm shutdown lets running tasks finish: nothing to do. A cold one (SIGQUIT, a second
    Ctrl-C) cancels the unacknowledged runs through ``Consumer.cancel_active_requests``:
    their messages go back to the broker (``acks_late``), and without this each killed run
    would count as an attempt, as if the message had failed. The release bumps each
    claim's version, so a run that still finishes meanwhile cannot commit: its redelivery
    does the work, once. This step wraps that one consumer method, in the main process.
    """

    label = "celery_reliable release on cold shutdown"

    def start(self, consumer: Any) -> None:
        cancel = consumer.cancel_active_requests

        def release_then_cancel() -> None:
            _release_interrupted(consumer.app)
            cancel()

        consumer.cancel_active_requests = release_then_cancel


def _release_interrupted(app: Celery) -> None:
    from celery.worker import state

    from .message import message_id_from

    reliable = Reliable.of(app)
    for request in list(state.active_requests):
        task = app.tasks.get(request.task_name)
        if not isinstance(task, ReliableTask) or request.acknowledged or not request.worker_pid:
            continue
        nesting = request.request_dict.get("replaced_task_nesting", 0)
        message_id = message_id_from(request.id, request.request_dict, replaced_nesting=nesting)
        owner = f"{request.hostname}:{request.worker_pid}"
        try:
            key = task.reliable_binding().options.handler_key
            if reliable.store.release_interrupted(message_id, key, owner):
                logger.warning("message %s interrupted by shutdown: not counted", message_id)
        except Exception:  # the store may be what is going away; redelivery still works
            logger.warning("could not release %s at shutdown", message_id, exc_info=True)
