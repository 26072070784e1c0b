"""Flower for the operator at 3 a.m., in headless Chromium, on a real worker's events.

A dead-lettered task must read as a failure on Flower's own pages (a danger badge, in the
"Failed" filter beside a plain task's FAILURE, its reason and a link to its entry on the task
page); a message replayed
while still broken must read as one message with several entries; Delete must ask first.
Set RELIABLE_SCREENSHOTS to a folder to keep a screenshot of each page for review.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from celery_reliable.testing import wait_for
from tests.support import celery_process

from .conftest import Stack, _declared_elsewhere, _stack
from .flower_support import navigate, screenshot
from .test_flower import _get, flower_state, free_port
from .test_flower_dead_letters import (
    browser,  # noqa: F401  (the fixture)
    browser_binaries,
)

APP = "tests.acceptance.lifecycle_app"


@pytest.fixture
def failures(tmp_path: Path) -> Iterator[tuple[Stack, str, dict[str, Any]]]:
    """A worker and `celery reliable flower` on Redis + PostgreSQL, after a success, a plain
    (not reliable) task's FAILURE and two dead-lettered messages: ``once``, and ``twice``
    (replayed while still broken, so its message has two entries and Flower three
    dead-lettered tasks)."""
    browser_binaries()  # skip before starting processes when there is no browser
    gen = _stack(("redis", "postgresql"), tmp_path)
    stack = next(gen)
    stack.producer.task(name="poison", shared=False)(_declared_elsewhere)  # for the replay
    stack.producer.task(name="plain_fails", shared=False)(_declared_elsewhere)
    port = free_port()
    args = ["-A", APP, "reliable", "flower", f"--port={port}", "--address=127.0.0.1"]
    flower = celery_process(
        [*args, "--dead-letters-allow-unauthenticated"],
        {**stack.env, "FLOWER_UNAUTHENTICATED_API": "true"},  # flower_state reads its API
        tmp_path / "flower.log",
    )
    url = f"http://127.0.0.1:{port}"
    letters = stack.reliable.dead_letters
    try:
        with stack.worker("-E", app=APP):
            wait_for(lambda: _get(f"{url}/healthcheck") is not None, 60, what="Flower to listen")
            once, twice = stack.producer.send_task("poison"), stack.producer.send_task("poison")
            done = stack.producer.send_task("effect")  # a success, which "Failed" leaves out
            plain = stack.producer.send_task("plain_fails")  # Celery's FAILURE, which it lists
            wait_for(lambda: flower_state(url, done.id) == "SUCCESS", 60, what="SUCCESS")
            wait_for(lambda: flower_state(url, plain.id) == "FAILURE", 60, what="FAILURE")
            for task in (once, twice):
                wait_for(lambda t=task: flower_state(url, t.id) == "DEAD_LETTERED", 60, what="DL")
            (first,) = [e for e in letters.list() if e.task_id == twice.id]
            letters.replay(first.id)
            assert stack.reliable.relay.drain() == 1
            wait_for(lambda: letters.count() == 3, 60, what="the replay to fail again")
            yield stack, url, {"once": once.id, "twice": twice.id, "first": first.id}
    finally:
        flower.stop()
        next(gen, None)  # the stack's teardown


def test_a_dead_lettered_task_reads_as_a_failure_in_flower(failures, browser):  # noqa: F811
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    stack, url, ids = failures
    letters = stack.reliable.dead_letters

    def find(css: str) -> Any:
        return browser.find_element(By.CSS_SELECTOR, css)

    def badges() -> list[tuple[str, str]]:
        # One script reads them all at once: the table re-renders while the filter applies,
        # and elements found in one call could be gone by the next (a stale reference).
        found = browser.execute_script(
            "return Array.from(document.querySelectorAll('#tasks-table tbody .badge'),"
            " s => [s.innerText.trim(), s.className]);"
        )
        return [(text, css) for text, css in found]

    # The tasks page: "Failed" lists the dead-lettered tasks with a danger badge, beside the
    # plain task's FAILURE (Flower's own danger badge), and leaves the success out.
    success = ("SUCCESS", "badge text-bg-success")
    browser.get(url + "/tasks")
    WebDriverWait(browser, 20).until(lambda _: len(badges()) == 5)
    assert success in badges()
    find('.task-state-filter[data-task-state="FAILURE"]').click()
    WebDriverWait(browser, 20).until(lambda _: badges() and success not in badges())
    danger = "badge text-bg-danger"
    # The replay ran as a new task, and was dead-lettered again: three dead-lettered tasks.
    assert sorted(badges()) == [("DEAD_LETTERED", danger)] * 3 + [("FAILURE", danger)]
    failed = find('.task-state-filter[data-task-state="FAILURE"]')
    assert failed.get_attribute("aria-pressed") == "true"
    screenshot(browser, "tasks-failed-filter")

    # The task's own page: its reason and a link to its entry, not "Result None".
    browser.get(f"{url}/task/{ids['once']}")
    (entry,) = [e for e in letters.list() if e.task_id == ids["once"]]
    assert find("#dead-letter-reason").text == entry.reason.value
    assert "text-bg-danger" in (find(".detail-list .badge").get_attribute("class") or "")
    assert "KeyError" in find("#dead-letter-error").text
    assert not [dt for dt in browser.find_elements(By.TAG_NAME, "dt") if dt.text == "Result"]
    screenshot(browser, "task-dead-lettered")
    navigate(browser, find("#dead-letter-link"))
    assert browser.current_url.endswith(f"/dead-letters/{entry.id}")

    # The list: three entries of two messages, the replayed message's two entries together.
    browser.get(url + "/dead-letters")
    assert find("#statistics-messages").text == "2"
    assert find("#statistics-count").text == "3"
    oldest = re.search(r"dead-lettered (.*) ago", find("#statistics").text)
    assert oldest, find("#statistics").text
    assert re.fullmatch(r"(\d+ min )?[\d.]+ s", oldest.group(1)), oldest.group(1)  # not 0:00:02
    rows = browser.find_elements(By.CSS_SELECTOR, ".dead-letter-row")
    messages = [r.get_attribute("data-message-id") for r in rows]
    assert messages[0] == messages[1] != messages[2]  # grouped, newest message first
    assert "same-message" in (rows[1].get_attribute("class") or "")
    assert [r.find_elements(By.CSS_SELECTOR, ".message-entries") != [] for r in rows] == [
        True,
        True,
        False,
    ]
    screenshot(browser, "dead-letters-grouped")

    # An entry of the replayed message lists its history; Delete asks first.
    browser.get(f"{url}/dead-letters/{ids['first']}")
    history = browser.find_elements(By.CSS_SELECTOR, "#message-history tbody tr")
    assert len(history) == 2
    assert "(this one)" in history[0].text
    assert "1\u00d7" in history[0].text  # replayed once
    browser.execute_script(
        "arguments[0].scrollIntoView({block: 'center', behavior: 'instant'})",
        find("#message-history"),
    )
    screenshot(browser, "entry-history")
    browser.execute_script("window.scrollTo({top: 0, behavior: 'instant'})")
    navigate(browser, find("#delete"))
    assert find("#confirm").text == f"Delete entry {ids['first']}"
    assert letters.get(ids["first"]) is not None  # nothing deleted yet
    screenshot(browser, "entry-delete-confirmation")
    navigate(browser, find("#confirm"))
    assert find(".result-line").text == f"deleted entry {ids['first']}"
    assert letters.get(ids["first"]) is None
