"""Engines are re-created in forked children (prefork pool) and leave the parent's alone."""

import os

from celery_reliable import Reliable
from celery_reliable.inbox import Outcome
from tests.support import make_app


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
