"""The fault matrix: every guarded call site of the delivery path, its fault, its invariant.

``MATRIX`` has one row per call site the pipeline declares in
``celery_reliable.delivery.guard.SITES``; :func:`test_every_call_site_has_a_row` fails when
a site is added to the code without a row here. Each row with an injection runs against
PostgreSQL (an embedded worker on the in-memory broker): the fault is raised at that call
site, and the message must still end exactly once, with its effect at most once.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from celery.contrib.testing.worker import start_worker
from sqlalchemy import Column, MetaData, String, Table, func, select
from sqlalchemy.exc import OperationalError

import celery_reliable.delivery.pipeline  # noqa: F401  (declares its sites)
from celery_reliable import MESSAGE_ID_HEADER, ReliableTask
from celery_reliable.delivery.guard import SITES
from celery_reliable.store.base import Status
from celery_reliable.testing import drop_store, wait_for
from tests.support import database_url, make_app, unique


@dataclass(frozen=True)
class Row:
    inject: str  # how the failure is injected
    invariant: str  # what must hold afterwards
    #: (object path on the Reliable instance, method) to fail once, or None: covered elsewhere.
    target: tuple[str, str] | None = None


MATRIX: dict[str, Row] = {
    "breaker.admit": Row("Redis behind a cut FaultyLink", "local breaker; message runs once"),
    "breaker.record": Row("Redis behind a cut FaultyLink", "local breaker; ending unchanged"),
    "inbox.claim": Row("store unreachable", "deferred; runs once later", ("store", "insert_claim")),
    "detectors.first_seen": Row(
        "OperationalError reading first_seen_at",
        "deferred, claim resumed; effect once",
        ("store", "first_seen_at"),
    ),
    "inbox.complete": Row("store fails at completion", "deferred; effect once"),
    "transaction.commit": Row("store fails at the commit", "deferred; effect once"),
    "inbox.save_result": Row("store fails saving the result", "SUCCESS; result lost, logged"),
    "inbox.renew_lease": Row("store fails renewing", "warning; next tick renews"),
    "inbox.fail": Row("store fails recording the failure", "warning; ending unchanged"),
    "publish.retry": Row("broker refuses the retry", "Reject(requeue=True)"),
    "publish.defer": Row("broker refuses the copy", "Reject(requeue=True)"),
    "dead_letter.write": Row(
        "lock timeout writing the dead letter",
        "deferred; dead-lettered once later",
        ("dead_letters", "add"),
    ),
}


#: How the body runs so that the path reaches the site: detectors are consulted after a
#: transient failure; a dead letter is written for a poison exception.
MODES = {"detectors.first_seen": "transient", "dead_letter.write": "poison"}


def test_every_call_site_has_a_row():
    assert set(MATRIX) == set(SITES), "a guarded call site without a row (or a stale row)"


class Faulty:
    """Fails the wrapped method once with an OperationalError, then lets it through."""

    def __init__(self, obj: object, method: str) -> None:
        self.real = getattr(obj, method)
        self.failed = 0
        setattr(obj, method, self)

    def __call__(self, *args, **kwargs):
        if not self.failed:
            self.failed += 1
            raise OperationalError("injected", {}, Exception("lock timeout"))
        return self.real(*args, **kwargs)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple]:
    url, prefix = database_url("postgresql", tmp_path), unique()
    app = make_app("memory://", url, prefix, reliable_max_attempts=5)
    reliable = app._celery_reliable
    reliable.create_schema()
    effects = Table(f"{prefix}effects", MetaData(), Column("message_id", String(255)))
    effects.create(reliable.database.engine)

    @app.task(base=ReliableTask, bind=True, name="fx", shared=False, poison_exceptions=(KeyError,))
    def fx(self, mode):
        with self.transaction() as session:
            session.execute(effects.insert().values(message_id=self.message_id))
            if mode == "poison":
                raise KeyError("poison")
            if (
                mode == "transient"
                and self.request.retries == 0
                and not self.request.headers.get("reliable_deferrals")
            ):
                raise ConnectionResetError("first run only")

    reliable.add_poison_detector(lambda context: None)  # makes detectors read first_seen_at
    yield app, reliable, effects, fx
    reliable.database.dispose()
    drop_store(url, prefix)


@pytest.mark.parametrize("site", [name for name, row in MATRIX.items() if row.target is not None])
def test_a_fault_at_the_call_site_keeps_the_invariant(world, site):
    app, reliable, effects, fx = world
    path, method = MATRIX[site].target
    fault = Faulty(getattr(reliable, path), method)
    mode = MODES.get(site, "ok")
    poison = mode == "poison"
    message_id = f"m-{unique()}"
    with start_worker(app, pool="threads", concurrency=1, perform_ping_check=False):
        fx.apply_async((mode,), headers={MESSAGE_ID_HEADER: message_id})
        wanted = Status.POISONED if poison else Status.COMPLETED
        wait_for(
            lambda: (row := reliable.store.get_status(message_id, "fx")) and row.status is wanted,
            60,
            what=f"{message_id} {wanted.value} after a fault at {site}",
        )
    assert fault.failed == 1
    with reliable.database.engine.connect() as conn:
        done = conn.execute(select(func.count()).select_from(effects)).scalar_one()
    assert done == (0 if poison else 1)
    assert reliable.dead_letters.count() == (1 if poison else 0)
