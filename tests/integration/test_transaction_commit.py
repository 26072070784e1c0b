"""``self.transaction()`` commits once, when the body returns: every other ending commits
nothing, and every ending gives the Session's connection back to the pool.

Eager runs (``apply()``) on each database: the pipeline is the same as in a worker, and
the run is over when ``apply()`` returns, so what it left behind can be checked at once.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import Column, MetaData, String, Table, func, select
from sqlalchemy.exc import OperationalError

from celery_reliable import MESSAGE_ID_HEADER, Reliable, ReliableTask
from celery_reliable.clock import utcnow
from celery_reliable.store.base import Status
from tests.support import make_app

pytestmark = pytest.mark.services


@dataclass
class Eager:
    reliable: Reliable
    effects: Table
    task: Any

    def effect_count(self) -> int:
        with self.reliable.database.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(self.effects)).scalar_one())

    def held_connections(self) -> int:
        """Connections of the transactional engine not returned to its pool."""
        return int(self.reliable.database.engine.pool.checkedout())


@pytest.fixture
def eager(db_url: str, table_prefix: str) -> Iterator[Eager]:
    app = make_app("memory://", db_url, table_prefix)
    reliable = Reliable.of(app)
    reliable.create_schema()
    effects = Table(f"{table_prefix}effects", MetaData(), Column("message_id", String(255)))
    effects.create(reliable.database.engine)

    @app.task(base=ReliableTask, bind=True, name="work", shared=False)
    def work(self, how):
        if how == "is taken over while it runs":  # its commit then finds a newer claim
            assert reliable.store.take_over(self.message_id, "work", 1, utcnow(), "thief")
        with self.transaction() as session:
            session.execute(effects.insert().values(message_id=self.message_id))
            if how == "raises in the block":
                raise ValueError(how)
            if how == "commits in the block":
                session.commit()
        if how == "raises after the block":
            raise ValueError(how)
        if how == "exits after the block":
            raise SystemExit(how)
        return how

    yield Eager(reliable, effects, work)
    reliable.database.dispose()


#: How the body ends -> (Celery's state, effects committed, the inbox row's status).
ENDINGS = {
    "returns": ("SUCCESS", 1, Status.COMPLETED),
    "raises in the block": ("FAILURE", 0, Status.POISONED),
    "raises after the block": ("FAILURE", 0, Status.POISONED),
    "commits in the block": ("FAILURE", 0, Status.POISONED),
    "is taken over while it runs": ("IGNORED", 0, Status.PROCESSING),
}


@pytest.mark.parametrize("how", list(ENDINGS))
def test_only_a_body_that_returns_commits_and_no_ending_keeps_a_connection(eager, how):
    result = eager.task.apply((how,), headers={MESSAGE_ID_HEADER: "m-1"})
    state, effects, status = ENDINGS[how]
    assert result.state == state, result.result
    assert eager.effect_count() == effects
    row = eager.reliable.store.get_status("m-1", "work")
    assert row.status is status
    if status is Status.COMPLETED:  # the result rides in the same commit as the mark
        assert eager.reliable.inbox.decode_result(row.result) == how
    assert eager.held_connections() == 0


def test_a_body_that_exits_after_the_block_commits_nothing_and_closes_its_session(eager):
    with pytest.raises(SystemExit):
        eager.task.apply(("exits after the block",), headers={MESSAGE_ID_HEADER: "m-1"})
    assert eager.effect_count() == 0
    assert eager.reliable.store.get_status("m-1", "work").status is Status.PROCESSING
    assert eager.held_connections() == 0


def test_a_store_failure_at_the_commit_commits_nothing_and_closes_its_session(eager, monkeypatch):
    def fails(*args: Any, **kwargs: Any) -> None:
        raise OperationalError("UPDATE", {}, ConnectionResetError("store lost at the commit"))

    monkeypatch.setattr(eager.reliable.inbox, "complete", fails)
    result = eager.task.apply(("returns",), headers={MESSAGE_ID_HEADER: "m-1"})
    assert result.state == "FAILURE"
    assert "cannot run now" in str(result.result)  # eager: deferred, said instead of sent
    assert eager.effect_count() == 0
    assert eager.reliable.store.get_status("m-1", "work").status is Status.FAILED
    assert eager.held_connections() == 0
