"""Engines are re-created in forked children (prefork pool) and leave the parent's alone."""

import os

import pytest

from celery_reliable import Reliable
from celery_reliable.inbox import Outcome
from celery_reliable.store import PsycopgStore
from celery_reliable.testing import drop_store
from tests.support import backend_pid, database_url, make_app, unique


def test_a_forked_child_gets_its_own_connections(db_url, table_prefix):
    ext = Reliable.of(make_app("memory://", db_url, table_prefix))
    ext.create_schema()
    inbox = ext.inbox
    assert inbox.claim("parent-1", "k", task_name="t", owner="p").outcome is Outcome.RUN
    pid = os.fork()
    if pid == 0:  # child: must not reuse (or close) the parent's sockets
        code = 1
        try:
            fresh = ext.database._engine is None
            ran = inbox.claim("child-1", "k", task_name="t", owner="c").outcome is Outcome.RUN
            code = 0 if fresh and ran else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    # The parent's pooled connection still works after the child used and dropped its own.
    assert inbox.claim("parent-2", "k", task_name="t", owner="p").outcome is Outcome.RUN
    assert inbox.claim("child-1", "k", task_name="t", owner="p").outcome is Outcome.IN_FLIGHT
    ext.database.dispose()


@pytest.mark.services
def test_a_forked_child_takes_its_own_dedicated_connection(tmp_path):
    """The raw path's connection (PsycopgStore) is the parent's alone: never used, never
    closed by a child, whose claims run on a connection of its own."""
    url, prefix = database_url("postgresql", tmp_path), unique()
    ext = Reliable.of(make_app("memory://", url, prefix))
    ext.create_schema()
    try:
        assert isinstance(ext.store, PsycopgStore)
        inbox = ext.inbox
        assert inbox.claim("parent-1", "k", task_name="t", owner="p").outcome is Outcome.RUN
        parent_backend = backend_pid(ext.database, "claims")
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # child
            code = 1
            try:
                ran = inbox.claim("child-1", "k", task_name="t", owner="c").outcome is Outcome.RUN
                os.write(write, str(backend_pid(ext.database, "claims")).encode())
                code = 0 if ran else 2
            finally:
                os._exit(code)
        os.close(write)
        with os.fdopen(read) as pipe:
            child_backend = int(pipe.read() or 0)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert child_backend not in (0, parent_backend)
        # The parent's connection survived the child: same backend, still working.
        assert inbox.claim("parent-2", "k", task_name="t", owner="p").outcome is Outcome.RUN
        assert backend_pid(ext.database, "claims") == parent_backend
    finally:
        ext.database.dispose()
        drop_store(url, prefix)
