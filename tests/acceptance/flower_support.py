"""A real ``celery reliable flower`` process and an HTTP client for it: what the Dead
Letters page tests and the fuzz suite share."""

from __future__ import annotations

import base64
import http.cookiejar
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select

from celery_reliable import Reliable
from celery_reliable.testing import KillableProcess, wait_for
from tests.support import celery_process

from .test_flower import free_port

APP = "tests.acceptance.worker_app"
CREDENTIALS = "admin:s3cret"


@dataclass
class Store:
    reliable: Reliable
    env: dict[str, str]
    ids: dict[str, int]  # a name per entry the tests act on

    def entry(self, name: str) -> Any:
        return self.reliable.dead_letters.get(self.ids[name])

    def outbox_has(self, message_id: str) -> bool:
        t = self.reliable.tables.outbox
        with self.reliable.database.engine.connect() as conn:
            query = select(t.c.id).where(t.c.message_id == message_id)
            return conn.execute(query).first() is not None


@contextmanager
def running_flower(store: Store, log: Path, *args: str) -> Iterator[str]:
    """`celery reliable flower` on a free loopback port; yields its base URL."""
    port = free_port()
    process = celery_process(
        ["-A", APP, "reliable", "flower", f"--port={port}", "--address=127.0.0.1", *args],
        store.env,
        log,
    )
    url = f"http://127.0.0.1:{port}"

    def listening() -> bool:
        assert process.proc.poll() is None, process.output()
        try:
            urllib.request.urlopen(f"{url}/healthcheck", timeout=2).close()
        except urllib.error.HTTPError:
            return True  # answering, even if with 401
        except OSError:
            return False
        return True

    try:
        wait_for(listening, 60, 0.1, what="Flower to listen")
        yield url
    finally:
        process.stop()


class Client:
    """An HTTP client with a cookie jar (the xsrf cookie) and optional basic auth."""

    def __init__(self, base: str, credentials: str | None = CREDENTIALS) -> None:
        self.base = base
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar))
        self.headers = {}
        if credentials:
            token = base64.b64encode(credentials.encode()).decode()
            self.headers["Authorization"] = f"Basic {token}"

    def request(
        self, path: str, data: list[tuple[str, str]] | None = None, **headers: str
    ) -> tuple[int, str]:
        body = None if data is None else urllib.parse.urlencode(data).encode()
        request = urllib.request.Request(
            self.base + path, data=body, headers={**self.headers, **headers}
        )
        try:
            with self.opener.open(request, timeout=30) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def token(self) -> str:
        """The xsrf token of a form (the matching cookie is now in the jar)."""
        status, page = self.request("/dead-letters")
        assert status == 200, page
        match = re.search(r'name="_xsrf" value="([^"]+)"', page)
        assert match, page
        return match.group(1)


def dead_letters_page(flower: KillableProcess, port: int) -> str:
    """The Dead Letters page a just-started Flower serves on loopback without credentials
    (``--dead-letters-allow-unauthenticated``), once it listens; fails if Flower exits."""

    def page() -> str | None:
        assert flower.proc.poll() is None, flower.output()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/dead-letters", timeout=2) as r:
                return str(r.read().decode())
        except OSError:
            return None

    return str(wait_for(page, 60, 0.2, what="Flower's Dead Letters page"))


def navigate(browser: Any, element: Any) -> None:
    """Click ``element`` and wait until the page it leads to has loaded.

    The old page is stamped first and the new one must lack the stamp: polling an old
    element for staleness races the navigation (Chromium can answer a query on a document
    being torn down with an inspector error, so errors while the page changes are retried).
    """
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.support.ui import WebDriverWait

    stamp = f"page-{id(element)}"
    browser.execute_script("document.documentElement.dataset.stamp = arguments[0]", stamp)
    element.click()
    loaded = (
        "return document.readyState === 'complete'"
        " && document.documentElement.dataset.stamp !== arguments[0]"
    )
    WebDriverWait(browser, 15, ignored_exceptions=(WebDriverException,)).until(
        lambda driver: driver.execute_script(loaded, stamp)
    )


def screenshot(browser: Any, name: str) -> None:
    """Save the page as ``$RELIABLE_SCREENSHOTS/<name>.png`` when that folder is set (review)."""
    folder = os.environ.get("RELIABLE_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(str(Path(folder) / f"{name}.png"))
