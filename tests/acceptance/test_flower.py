"""``celery reliable flower`` shows the custom end states: DEAD_LETTERED, DUPLICATE, RETRY.

Flower builds task states from worker events. A dead letter ends as Celery's FAILURE and a
duplicate as its SUCCESS (so callers, errbacks and canvas see what plain Celery reports),
and ReliableTask also sends ``task-dead_lettered`` / ``task-duplicate``; the Flower that
``celery reliable flower`` starts ranks those two above FAILURE and SUCCESS, whichever
event comes first. A retry is Celery's own ``task-retried``.
"""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

from celery_reliable import MESSAGE_ID_HEADER
from celery_reliable.testing import wait_for
from tests.support import celery_process

from .conftest import Stack

APP = "tests.acceptance.lifecycle_app"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def flower(stack: Stack) -> Iterator[str]:
    port = free_port()
    process = celery_process(
        [
            *("-A", APP, "reliable", "flower", f"--port={port}", "--address=127.0.0.1"),
            "--dead-letters-allow-unauthenticated",
        ],
        {**stack.env, "FLOWER_UNAUTHENTICATED_API": "true"},
        stack.dir / "flower.log",
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _get(f"{url}/healthcheck") is not None, 60, what="Flower to listen")
        yield url
    finally:
        process.stop()


def _get(url: str) -> bytes | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return bytes(response.read())
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None


def flower_state(url: str, task_id: str) -> str | None:
    body = _get(f"{url}/api/task/info/{task_id}")
    return None if body is None else json.loads(body).get("state")


def test_flower_shows_dead_lettered_duplicate_and_retry(postgres_stack: Stack):
    stack = postgres_stack
    producer = stack.producer
    with flower(stack) as url, stack.worker("-E", app=APP):
        poison = producer.send_task("poison")
        headers = {MESSAGE_ID_HEADER: "order-1-receipt"}
        first = producer.send_task("effect", headers=headers)
        wait_for(lambda: flower_state(url, first.id) == "SUCCESS", 60, what="first SUCCESS")
        second = producer.send_task("effect", headers=headers)
        retried = producer.send_task("retry_later")
        for task, state in ((poison, "DEAD_LETTERED"), (second, "DUPLICATE"), (retried, "RETRY")):
            wait_for(lambda t=task, s=state: flower_state(url, t.id) == s, 60, what=state)
    assert stack.count("runs") == 1  # the duplicate did not run the body
