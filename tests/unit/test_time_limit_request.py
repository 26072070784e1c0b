"""What a ReliableTask's request does when the pool reports a time limit, case by case.

The request class is built as a worker builds it: the task's ``Request``, the dead-letter
intake's expiry mixin in front (``_with_expiry``), and Celery's strategy subclass
(``create_request_cls``). The pool's two calls on a hard limit are made as billiard makes
them: ``on_failure`` with ``TimeLimitExceeded``, then ``on_timeout``. Real prefork workers
run it in tests/acceptance/test_run_edges.py.
"""

from __future__ import annotations

import logging
from types import SimpleNamespace
from unittest.mock import Mock
from uuid import uuid4

import pytest
from billiard.einfo import ExceptionInfo
from billiard.exceptions import TimeLimitExceeded
from celery import Celery, signals
from celery.contrib.testing.mocks import TaskMessage
from celery.utils.imports import symbol_by_name
from celery.worker import state as worker_state
from celery.worker.request import Request, create_request_cls

from celery_reliable import ReliableTask
from celery_reliable.delivery.time_limit import RequeueOnHardTimeLimit
from celery_reliable.intake import _with_expiry

OURS = "hard time limit (2s) exceeded"


class OwnRequest(Request):  # type: ignore[misc]
    """A user's own request class."""


def killed(task, *, soft=False):
    """The pool's calls for a run of ``task`` over its time limit, and what they did."""
    events, rejected, failures = [], [], []
    eventer = SimpleNamespace(enabled=True, send=lambda type, **f: events.append((type, f)))
    request_cls = create_request_cls(
        _with_expiry(symbol_by_name(task.Request)), task, Mock(), "host", eventer, app=task.app
    )
    request = request_cls(
        TaskMessage(task.name, id=str(uuid4())),  # the backend is one per process
        app=task.app,
        task=task,
        eventer=eventer,
        on_reject=lambda _logger, _errors, requeue: rejected.append(requeue),
    )
    receiver = lambda **kwargs: failures.append(kwargs["exception"])  # noqa: E731
    signals.task_failure.connect(receiver, weak=False)
    try:
        if soft:
            request.on_timeout(soft=True, timeout=1)
        else:
            try:
                raise TimeLimitExceeded(2)
            except TimeLimitExceeded:
                request.on_failure(ExceptionInfo())
            request.on_timeout(soft=False, timeout=2)
    finally:
        signals.task_failure.disconnect(receiver)
    state = task.app.AsyncResult(request.id).state
    return SimpleNamespace(
        request=request,
        state=state,
        events=[type for type, _ in events],
        fields=dict(events),
        rejected=rejected,
        failures=failures,
    )


@pytest.fixture
def app():
    app = Celery("time_limits", backend="cache+memory://", set_as_current=False)
    app.conf.task_default_queue = "q"
    return app


def task_of(app, base=ReliableTask, **options):
    @app.task(base=base, name="overruns", shared=False, time_limit=2, **options)
    def overruns():
        """Its body never runs here."""

    return app.tasks["overruns"]


def test_a_hard_limit_requeues_the_message_as_a_retry_and_reports_no_failure(app, caplog):
    with caplog.at_level(logging.DEBUG):
        end = killed(task_of(app))
    assert end.state == "PENDING"  # no FAILURE for the caller's .get()
    assert end.failures == []  # no task_failure signal (errbacks run with the FAILURE)
    assert end.rejected == [True]  # requeued, once
    assert end.events == ["task-rejected", "task-retried"]  # Flower's last state: RETRY
    assert end.fields["task-retried"]["exception"] == "TimeLimitExceeded(2)"
    assert [r.levelno for r in caplog.records if r.levelno >= logging.WARNING] == [logging.WARNING]
    assert OURS in caplog.text
    assert end.request.id not in worker_state.requests  # ready: the worker holds it no more


@pytest.mark.parametrize(
    "case",
    [
        "acks_on_timeout",  # acknowledged on timeout: Celery's FAILURE is final
        "not acks_late",  # acknowledged at the start: Celery's FAILURE is final
        "own Request",  # the user's request class: Celery's, as documented
    ],
)
def test_where_the_message_is_not_requeued_as_ours_celery_reports_the_failure(app, case):
    options = {
        "acks_on_timeout": {"acks_on_timeout": True},
        "not acks_late": {"acks_late": False},
        "own Request": {"Request": f"{__name__}:OwnRequest"},
    }[case]
    end = killed(task_of(app, **options))
    assert end.state == "FAILURE"
    # Once or twice: Celery's on_failure signals it too when it does not requeue.
    assert {type(exc) for exc in end.failures} == {TimeLimitExceeded}
    assert "task-failed" in end.events
    assert "task-retried" not in end.events


def test_in_a_cold_shutdown_celery_handles_the_timeout(app, caplog, monkeypatch):
    monkeypatch.setattr(worker_state, "should_terminate", 15)
    with caplog.at_level(logging.WARNING):
        end = killed(task_of(app))
    assert "task-retried" not in end.events
    assert OURS not in caplog.text
    assert end.rejected == [True]  # Celery requeues it too (acks_on_timeout = False)


def test_a_soft_limit_is_celerys_a_warning_only(app, caplog):
    with caplog.at_level(logging.WARNING):
        end = killed(task_of(app), soft=True)
    assert (end.state, end.events, end.rejected) == ("PENDING", [], [])
    assert "Soft time limit (1s) exceeded" in caplog.text


def test_other_failures_are_celerys(app):
    task = task_of(app, acks_on_failure=False)
    request = create_request_cls(
        _with_expiry(symbol_by_name(task.Request)), task, Mock(), "host", None, app=app
    )(TaskMessage(task.name, id=str(uuid4())), app=app, task=task)
    try:
        raise ValueError("boom")
    except ValueError:
        request.on_failure(ExceptionInfo())
    assert app.AsyncResult(request.id).state == "FAILURE"


def test_the_worker_builds_requests_with_ours_in_front_of_celerys():
    built = create_request_cls(
        _with_expiry(symbol_by_name(ReliableTask.Request)), Mock(), Mock(), "host", None
    )
    assert issubclass(built, RequeueOnHardTimeLimit)
    assert built.on_timeout is RequeueOnHardTimeLimit.on_timeout
    assert built.on_failure is RequeueOnHardTimeLimit.on_failure


def test_celerys_built_in_tasks_keep_celerys_request():
    app = Celery("builtins", task_cls=ReliableTask, set_as_current=False)
    assert app.tasks["celery.chord_unlock"].Request == "celery.worker.request:Request"
