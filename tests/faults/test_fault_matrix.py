"""The fault matrix: every guarded call site of the delivery path, its fault, its invariant.

``MATRIX`` has one row per call site the pipeline declares in
``celery_reliable.delivery.guard.SITES``; :func:`test_every_call_site_has_a_row` fails when
a site is added to the code without a row here. Every row runs the one test body below
against the real services: a PostgreSQL store, a Redis broker (and RabbitMQ too where the
broker is what fails: the publish of a retry or a deferral), an embedded worker. The row
says what is made to fail once (a method of the extension's objects, or the TCP link to the
breakers' Redis) and how the body behaves so that the delivery reaches that call site.

The invariant, checked for every row: the message ends exactly once (one ``SUCCESS`` or
one ``FAILURE``), as done, retried-then-done, or dead-lettered; the effect the body writes
through ``self.transaction()`` exists once when done and never when dead-lettered; no
delivery ends ``FAILURE`` (which acknowledges it) while its inbox row is not dead; and
every Session of ``self.transaction()`` is closed, whichever way its run ended.
Adding a site is adding a row.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from celery import states
from celery.contrib.testing.worker import start_worker
from celery.signals import task_postrun
from kombu.exceptions import OperationalError as BrokerRefused
from sqlalchemy import Column, MetaData, String, Table, func, select
from sqlalchemy.exc import OperationalError

import celery_reliable.delivery.lease
import celery_reliable.delivery.outcomes
import celery_reliable.delivery.pipeline  # noqa: F401
from celery_reliable import MESSAGE_ID_HEADER, ReliableTask
from celery_reliable.delivery.guard import SITES
from celery_reliable.store.base import Status
from celery_reliable.testing import FaultyLink, drop_store, wait_for
from tests.support import make_app, require, unique


def store_error() -> Exception:
    return OperationalError("injected", {}, Exception("lock timeout"))


def broker_error() -> Exception:
    return BrokerRefused("injected: the broker refused the publish")


@dataclass(frozen=True)
class Fault:
    """``method`` of the object at ``path`` (from the extension; ``app.`` from the app)
    raises ``error()`` on its first call, then lets calls through."""

    path: str
    method: str
    error: Callable[[], Exception] = store_error


@dataclass(frozen=True)
class Row:
    inject: str  # how the failure is injected
    invariant: str  # what must hold afterwards
    faults: tuple[Fault, ...] = ()
    #: How the body behaves: "ok" writes its effect; "transient" fails its first run;
    #: "poison" raises a poison exception; "plain" writes outside self.transaction();
    #: "slow" runs until its lease was renewed twice; "cut" cuts the breakers' Redis link.
    body: str = "ok"
    breaker_link: str | None = None  # "cut": the breakers' Redis is cut before sending
    dead: bool = False  # the message ends dead-lettered (else done)
    runs: int = 1  # how often the body runs
    brokers: tuple[str, ...] = ("redis",)
    logged: str | None = None  # a WARNING that says what happened
    conf: dict[str, Any] = field(default_factory=dict)


MATRIX: dict[str, Row] = {
    "breaker.admit": Row(
        "the breakers' Redis behind a cut FaultyLink",
        "local breaker; message runs once",
        body="ok",
        breaker_link="cut",
        logged="circuit breaker storage unreachable",
    ),
    "breaker.record": Row(
        "the FaultyLink cut while the body runs",
        "ending unchanged; the breaker falls back to this process's own (a warning)",
        body="cut",
        logged="circuit breaker storage unreachable",
    ),
    "inbox.claim": Row(
        "store unreachable", "deferred; runs once later", (Fault("store", "insert_claim"),)
    ),
    "detectors.first_seen": Row(
        "OperationalError reading first_seen_at",
        "deferred, claim resumed; effect once",
        (Fault("store", "first_seen_at"),),
        body="transient",
        runs=2,
    ),
    "inbox.complete": Row(
        "store fails at completion (body without a transaction)",
        "deferred; the copy runs again and completes",
        (Fault("inbox", "complete"),),
        body="plain",
        runs=2,
    ),
    "transaction.commit": Row(
        "store fails at the commit, when the body has returned",
        "deferred, nothing committed; effect once",
        (Fault("inbox", "complete"),),
        runs=2,
    ),
    "inbox.renew_lease": Row(
        "store fails renewing",
        "warning; next tick renews",
        (Fault("store", "renew_lease"),),
        body="slow",
        logged="could not renew the lease",
        conf={"reliable_stuck_threshold": "1.5s"},
    ),
    "inbox.fail": Row(
        "store fails recording the failure",
        "warning; the retry waits the dead run's lease out, then done once",
        (Fault("inbox", "fail"),),
        body="transient",
        runs=2,
        logged="could not record the failure",
        conf={"reliable_stuck_threshold": "2s"},
    ),
    "publish.retry": Row(
        "broker refuses the retry",
        "Reject(requeue=True); the requeued message runs again, done once",
        (Fault("app.amqp", "send_task_message", broker_error),),
        body="transient",
        runs=2,
        brokers=("redis", "rabbitmq"),
    ),
    "publish.defer": Row(
        "store fails the claim, then the broker refuses the deferred copy",
        "Reject(requeue=True); runs once later",
        (
            Fault("store", "insert_claim"),
            Fault("app.amqp", "send_task_message", broker_error),
        ),
        brokers=("redis", "rabbitmq"),
    ),
    "dead_letter.write": Row(
        "lock timeout writing the dead letter",
        "deferred; the copy resumes the claim, dead-lettered once",
        (Fault("dead_letters", "add"),),
        body="poison",
        dead=True,
        runs=2,  # the copy runs the body again: it raised, so nothing of it was committed
    ),
}


def test_every_call_site_has_a_row():
    assert set(MATRIX) == set(SITES), "a guarded call site without a row (or a stale row)"


class Faulty:
    """Fails the wrapped method once with ``error()``, then lets it through; counts calls."""

    def __init__(self, obj: object, method: str, error: Callable[[], Exception]) -> None:
        self.real = getattr(obj, method)
        self.error = error
        self.calls = 0
        setattr(obj, method, self)

    @property
    def failed(self) -> int:
        return min(self.calls, 1)

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.calls == 1:
            raise self.error()
        return self.real(*args, **kwargs)


class Logged(logging.Handler):
    """The WARNINGs (and worse) of the library, as their messages."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def resolve(reliable: Any, app: Any, path: str) -> object:
    obj: object = app if path.startswith("app.") else reliable
    for part in path.removeprefix("app.").split("."):
        obj = getattr(obj, part)
    return obj


@dataclass
class World:
    site: str
    app: Any
    reliable: Any
    effects: Table
    task: Any
    link: FaultyLink
    runs: list[str] = field(default_factory=list)
    faults: list[Faulty] = field(default_factory=list)


@pytest.fixture
def world(request: pytest.FixtureRequest) -> Iterator[World]:
    site, broker = request.param
    row = MATRIX[site]
    url, prefix = require("postgresql"), unique()
    link = FaultyLink.to(require("redis"))
    app = make_app(
        require(broker),
        url,
        prefix,
        reliable_max_attempts=5,
        reliable_redis_url=link.url,
        # A retry waits on the worker unacknowledged: Redis must not hand it out again.
        broker_transport_options={"visibility_timeout": 60},
        **row.conf,
    )
    reliable = app._celery_reliable
    reliable.create_schema()
    reliable.breakers.configure("matrix", failure_threshold=3)
    effects = Table(f"{prefix}effects", MetaData(), Column("message_id", String(255)))
    effects.create(reliable.database.engine)
    world = World(site, app, reliable, effects, None, link)

    @app.task(
        base=ReliableTask,
        bind=True,
        name="fx",
        shared=False,
        poison_exceptions=(KeyError,),
        circuit_breaker="matrix",
    )
    def fx(self, body):
        world.runs.append(self.message_id)
        if body == "plain":  # no self.transaction(): the pipeline commits the mark alone
            return
        if body == "cut":  # admitted through Redis; the breaker is told through nothing
            link.cut()
        if body == "slow":  # the lease is renewed (once failing) while the body runs
            renewals = world.faults[0]
            wait_for(lambda: renewals.calls >= 2, 20, what="two lease renewals")
        with self.transaction() as session:
            session.execute(effects.insert().values(message_id=self.message_id))
            if body == "poison":
                raise KeyError("poison")
            if body == "transient" and len(world.runs) == 1:
                raise ConnectionResetError("first run only")

    world.task = fx
    reliable.add_poison_detector(lambda context: None)  # makes detectors read first_seen_at
    yield world
    link.close()
    with app.connection_for_write() as conn:
        conn.default_channel.queue_delete(f"q_{prefix}")
    reliable.database.dispose()
    drop_store(url, prefix)


CASES = [(site, broker) for site, row in MATRIX.items() for broker in row.brokers]


@pytest.mark.parametrize("world", CASES, ids=["-".join(c) for c in CASES], indirect=True)
def test_a_fault_at_the_call_site_keeps_the_invariant(world: World):
    site, row = world.site, MATRIX[world.site]
    reliable, message_id = world.reliable, f"m-{unique()}"
    endings: list[tuple[str, Status | None]] = []
    lock = threading.Lock()

    def ended(sender=None, task_id=None, state=None, **_: Any) -> None:
        row_now = reliable.store.get_status(message_id, "fx")
        with lock:
            endings.append((state, row_now.status if row_now else None))

    task_postrun.connect(ended, sender=world.task, weak=False)
    logged = Logged()
    library = logging.getLogger("celery_reliable")
    library.addHandler(logged)
    try:
        if row.breaker_link == "cut":
            world.link.cut()
        with start_worker(
            world.app,
            pool="threads",
            concurrency=1,
            perform_ping_check=False,
            loglevel="WARNING",  # the warnings a row expects (the default is ERROR)
            shutdown_timeout=30,  # an embedded worker on RabbitMQ takes ~10 s to stop
        ):
            world.task.apply_async((row.body,), headers={MESSAGE_ID_HEADER: message_id})
            for fault in row.faults:  # armed now: the test's own publish went through
                world.faults.append(
                    Faulty(resolve(reliable, world.app, fault.path), fault.method, fault.error)
                )
            wanted = Status.POISONED if row.dead else Status.COMPLETED
            final = states.FAILURE if row.dead else states.SUCCESS
            wait_for(
                lambda: any(state == final for state, _ in endings),
                40,
                what=f"{message_id} {wanted.value} after a fault at {site}",
            )
    finally:
        task_postrun.disconnect(ended, sender=world.task)
        library.removeHandler(logged)

    assert [fault.failed for fault in world.faults] == [1] * len(row.faults), "not injected"
    terminal = [(s, status) for s, status in endings if s in states.READY_STATES]
    assert terminal == [(final, wanted)], f"the message must end exactly once: {endings}"
    assert reliable.store.get_status(message_id, "fx").status is wanted
    assert len(world.runs) == row.runs, endings
    with reliable.database.engine.connect() as conn:
        done = conn.execute(select(func.count()).select_from(world.effects)).scalar_one()
    assert done == (0 if row.dead or row.body == "plain" else 1)
    assert reliable.dead_letters.count() == (1 if row.dead else 0)
    assert reliable.database.engine.pool.checkedout() == 0, "a connection was not given back"
    if row.logged is not None:
        assert any(row.logged in message for message in logged.messages), row.logged
