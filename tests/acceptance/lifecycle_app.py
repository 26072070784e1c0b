"""worker_app plus tasks that fail on purpose, for the failure-path acceptance tests.

Failures are steered through files in RT_DIR, so the test process decides what the worker
process's next run does (a fix is deployed = a file removed).
"""

from __future__ import annotations

import os

from celery_reliable import Reliable, ReliableTask, RetryPolicy
from tests.acceptance.worker_app import DIR, app, note

__all__ = ["app"]

QUICK = RetryPolicy.fixed(2, 0.2)


def runs(name: str) -> int:
    path = DIR / name
    return len(path.read_text().split()) if path.exists() else 0


@app.task(base=ReliableTask, bind=True, name="gateway", retry_policy=RetryPolicy.fixed(2, 0.2))
def gateway(self, failures):
    """Loses its connection ``failures`` times, then works: transient, retried by its policy."""
    note("gateway")
    if runs("gateway") <= failures:
        raise ConnectionResetError("the payment gateway hung up")
    return "paid"


@app.task(base=ReliableTask, bind=True, name="always_fails", retry_policy=QUICK)
def always_fails(self):
    note("always_fails")
    raise ValueError("this handler has a bug")


@app.task(base=ReliableTask, bind=True, name="poison", poison_exceptions=(KeyError,))
def poison(self):
    note("poison")
    raise KeyError("no such customer")


@app.task(name="plain_fails")
def plain_fails():
    """A plain Celery task, not a ReliableTask: it raises and ends as Celery's FAILURE (no
    retry, no dead letter), as a task of an app not yet made reliable does beside ours."""
    raise RuntimeError("a plain task's bug")


@app.task(base=ReliableTask, bind=True, name="fixable", retry_policy=RetryPolicy.fixed(0, 1))
def fixable(self):
    note("fixable")
    if (DIR / "broken").exists():
        raise ValueError("bug, until the fix is deployed")
    return "fixed"


# Retries longer than a second wait in the store (no relay runs in these tests): a task
# stays in RETRY for as long as a test needs to look at it.
app.conf.reliable_retry_max_broker_delay = 1


@app.task(base=ReliableTask, bind=True, name="retry_later", retry_policy=RetryPolicy.fixed(1, 600))
def retry_later(self):
    note("retry_later")
    raise ValueError("not yet")


if "RT_MAINTENANCE" in os.environ:  # beat runs both jobs every second, with short retention
    app.conf.update(
        reliable_cleanup_interval="1s",
        reliable_recovery_interval="1s",
        reliable_outbox_retention="1s",
        reliable_stuck_threshold="2s",
    )


# A breaker for `celery reliable breakers` to show and reset (state in this process only).
app_reliable = Reliable.of(app)
app_reliable.breakers.configure("payment-service", failure_threshold=1, reset_timeout=60)
