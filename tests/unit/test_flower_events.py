"""Flower's event state under ``celery reliable flower``: our final states win, in any order."""

from __future__ import annotations

import time

import pytest
from celery import Celery

from celery_reliable.flower.events import reliable_events

pytest.importorskip("flower")


@pytest.fixture
def state():  # type: ignore[no-untyped-def]
    from flower.events import Events
    from tornado.ioloop import IOLoop

    events = reliable_events(
        Events,
        capp=Celery("flower-events"),
        io_loop=IOLoop.current(),
        enable_events=False,
        max_workers_in_memory=10,
        max_tasks_in_memory=10,
    )
    return events.state


def send(state, task_id: str, kind: str, **fields: object) -> None:  # type: ignore[no-untyped-def]
    state.event(
        {
            "type": f"task-{kind}",
            "uuid": task_id,
            "hostname": "w@h",
            "timestamp": time.time(),
            "local_received": time.time(),
            "clock": 1,
            **fields,
        }
    )


@pytest.mark.parametrize(
    ("ours", "celerys", "state_name"),
    [("duplicate", "succeeded", "DUPLICATE"), ("dead_lettered", "failed", "DEAD_LETTERED")],
)
@pytest.mark.parametrize("ours_first", [True, False])
def test_our_final_state_wins_whichever_event_comes_first(  # type: ignore[no-untyped-def]
    state, ours, celerys, state_name, ours_first
) -> None:
    send(state, "t1", "received", name="shop.charge")
    send(state, "t1", "started")
    pair = [(ours, {"dead_letter_id": 7}), (celerys, {"result": "'r'", "exception": "E()"})]
    for kind, fields in pair if ours_first else reversed(pair):
        send(state, "t1", kind, **fields)
    task = state.tasks["t1"]
    assert task.state == state_name
    assert task.name == "shop.charge"
    assert task.dead_letter_id == 7  # the fields of both events are kept


def test_plain_tasks_keep_celerys_states(state) -> None:  # type: ignore[no-untyped-def]
    send(state, "t2", "received", name="shop.plain")
    send(state, "t2", "succeeded", result="1")
    send(state, "t2", "started")  # late, lower precedence: merged, not the state
    assert state.tasks["t2"].state == "SUCCESS"
