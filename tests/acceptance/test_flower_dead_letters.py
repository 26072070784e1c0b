"""`celery -A app reliable flower`: the Dead Letters page in a real Flower process.

The store (PostgreSQL) is filled through the Python API; two Flower processes serve it, one
behind basic auth (HTTP-level tests: authentication, xsrf, validation, escaping) and one on
loopback without auth (explicitly allowed), driven by a real headless Chromium.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from celery_reliable import Reliable
from celery_reliable.dead_letters import FailedMessage
from celery_reliable.testing import drop_store
from tests.support import (
    REQUIRE_SERVICES,
    ROOT,
    make_app,
    require,
    unique,
)

from .flower_support import APP, CREDENTIALS, Client, Store, running_flower

XSS = "<script>window.pwned = 1</script>"


def _add(reliable: Reliable, name: str, reason: str, args: list[Any]) -> int:
    try:  # a real exception, so the entry has a real traceback
        raise ValueError(f"card declined for {name} <b>bold</b>")
    except ValueError as exc:
        message = FailedMessage(
            message_id=f"msg-{name}",
            task_id=f"task-{name}",
            task_name="effect",
            args=args,
            kwargs={"note": XSS},
            attempts=3,
        )
        return reliable.dead_letters.add(message, reason, exc=exc)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    url = require("postgresql")
    prefix = unique()
    directory = tmp_path_factory.mktemp("flower")
    app = make_app("memory://", url, prefix)
    reliable = Reliable.of(app)
    reliable.create_schema()
    ids = {"xss": _add(reliable, "xss", "MaxRetriesExceeded", [XSS, 42])}
    for n in range(3):  # the browser's batch dry run counts these three
        ids[f"poison-{n}"] = _add(reliable, f"poison-{n}", "PoisonMessage", [n])
    ids["xsrf"] = _add(reliable, "xsrf", "ValidationFailed", [1])
    for n in range(2):
        ids[f"batch-{n}"] = _add(reliable, f"batch-{n}", "ManualRejection", [n])
    ids["delete"] = _add(reliable, "delete", "AuthorizationFailed", [1])
    env = {
        "RT_BROKER": "memory://",
        "RT_DB": url,
        "RT_PREFIX": prefix,
        "RT_DIR": str(directory),
    }
    yield Store(reliable, env, ids)
    reliable.database.dispose()
    drop_store(url, prefix)


@pytest.fixture(scope="module")
def authed(store: Store, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Flower behind basic auth."""
    log = tmp_path_factory.mktemp("authed") / "flower.log"
    with running_flower(store, log, f"--basic-auth={CREDENTIALS}") as url:
        yield url


@pytest.fixture(scope="module")
def open_flower(store: Store, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Flower without auth: on loopback, explicitly allowed."""
    log = tmp_path_factory.mktemp("open") / "flower.log"
    with running_flower(store, log, "--dead-letters-allow-unauthenticated") as url:
        yield url


# -- start-up ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--address=0.0.0.0"], "without authentication on 0.0.0.0"),
        (["--address=127.0.0.1"], "pass --dead-letters-allow-unauthenticated"),
        (["--address=0.0.0.0", "--dead-letters-allow-unauthenticated"], "on 0.0.0.0"),
        ([], "on every interface"),
    ],
)
def test_refuses_to_start_without_authentication(store: Store, args: list[str], says: str):
    result = subprocess.run(
        [sys.executable, "-m", "celery", "-A", APP, "reliable", "flower", "--port=1", *args],
        env={**os.environ, "PYTHONPATH": str(ROOT), **store.env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.stderr
    assert says in errors[0]
    assert "Traceback" not in result.stderr


# -- HTTP ----------------------------------------------------------------------------------


def test_pages_need_flowers_authentication(store: Store, authed: str):
    entry = store.ids["xss"]
    anonymous, wrong = Client(authed, None), Client(authed, "admin:wrong")
    for path in ("/dead-letters", f"/dead-letters/{entry}"):
        assert anonymous.request(path)[0] == 401
        assert wrong.request(path)[0] == 401
        assert Client(authed).request(path)[0] == 200
    # A POST with a valid xsrf token but without credentials: authentication refuses it.
    client = Client(authed)
    token = client.token()
    del client.headers["Authorization"]
    replays = store.entry("xss").replay_count  # the module's browser test replays it too
    assert client.request("/dead-letters/replay", [("ids", str(entry)), ("_xsrf", token)])[0] == 401
    assert store.entry("xss").replay_count == replays
    # The navbar link is on Flower's own pages, served by Flower's own handlers.
    assert 'id="nav-dead-letters"' in Client(authed).request("/workers")[1]


def test_replay_needs_a_post_with_the_xsrf_token(store: Store, authed: str):
    client, entry = Client(authed), str(store.ids["xsrf"])
    token = client.token()
    assert client.request("/dead-letters/replay", [("ids", entry)])[0] == 403  # no token
    assert client.request("/dead-letters/replay", [("ids", entry), ("_xsrf", "2|x|y|1")])[0] == 403
    # A fresh client (no xsrf cookie) replaying a token seen elsewhere: refused too.
    assert (
        Client(authed).request("/dead-letters/replay", [("ids", entry), ("_xsrf", token)])[0] == 403
    )
    cross_site = client.request(
        "/dead-letters/replay",
        [("ids", entry), ("_xsrf", token)],
        **{"Sec-Fetch-Site": "cross-site"},
    )
    assert cross_site[0] == 403
    assert client.request(f"/dead-letters/{entry}/delete")[0] == 405  # GET changes nothing
    assert store.entry("xsrf").replay_count == 0

    status, page = client.request("/dead-letters/replay", [("ids", entry), ("_xsrf", token)])
    assert status == 200, page
    assert "replayed 1 of 1 entries" in page
    assert store.entry("xsrf").replay_count == 1
    assert store.outbox_has("msg-xsrf")


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/dead-letters?reason=Nope", "unknown reason &#x27;Nope&#x27;"),
        ("/dead-letters?since=yesterday", "is neither an ISO time nor an age"),
        ("/dead-letters?until=2024-13-45", "is neither an ISO time nor an age"),
        ("/dead-letters?since=2h&until=3h", "since must be before until"),
        ("/dead-letters?replayed=maybe", "replayed must be"),
        ("/dead-letters?limit=0", "limit must be from 1 to 500"),
        ("/dead-letters?offset=x", "offset must be a whole number"),
        ("/dead-letters/abc", "entry id must be a whole number"),
        ("/dead-letters/-1", "entry id must be"),
        ("/dead-letters/%3Cscript%3E", "entry id must be a whole number, not &#x27;&lt;script&gt;"),
    ],
)
def test_bad_filters_and_ids_are_400_with_a_message(authed: str, path: str, message: str):
    status, page = Client(authed).request(path)
    assert status == 400
    assert message in page
    assert "Traceback" not in page


def test_bad_action_input_is_400_and_changes_nothing(store: Store, authed: str):
    client = Client(authed)
    token = client.token()
    for path, data, message in (
        ("/dead-letters/replay", [], "select at least one entry"),
        ("/dead-letters/replay", [("ids", "1; DROP TABLE")], "entry id must be a whole number"),
        ("/dead-letters/replay-batch", [("reason", "Nope")], "unknown reason"),
        ("/dead-letters/purge", [("older_than", "forever")], "is not a duration"),
    ):
        status, page = client.request(path, [*data, ("_xsrf", token)])
        assert (status, message in page) == (400, True), page
    status, page = client.request("/dead-letters/replay", [("ids", "999999999"), ("_xsrf", token)])
    assert status == 404
    assert "no dead-letter entry 999999999" in page
    assert store.reliable.dead_letters.count(reason="ManualRejection", replayed=True) == 0


def test_user_data_is_shown_escaped(store: Store, authed: str):
    page = Client(authed).request(f"/dead-letters/{store.ids['xss']}")[1]
    assert "<script>window.pwned" not in page
    assert "&lt;script&gt;window.pwned = 1&lt;/script&gt;" in page  # args and kwargs
    assert "card declined for xss &lt;b&gt;bold&lt;/b&gt;" in page  # the exception message
    assert "Traceback (most recent call last)" in page  # the stored traceback, as text
    listing = Client(authed).request("/dead-letters?reason=MaxRetriesExceeded")[1]
    assert "<b>bold</b>" not in listing
    assert "&lt;b&gt;bold&lt;/b&gt;" in listing


def test_pagination_and_statistics(store: Store, authed: str):
    client = Client(authed)
    total = store.reliable.dead_letters.count()
    first = client.request("/dead-letters?limit=3")[1]
    assert len(re.findall(r'class="dead-letter-row"', first)) == 3
    assert f"1\u20133 of {total}" in first
    next_url = re.search(r'href="([^"]+)" id="next-page"', first)
    assert next_url
    second = client.request(next_url.group(1).replace("&amp;", "&"))[1]
    assert f"4\u20136 of {total}" in second
    assert 'id="previous-page"' in second
    rows = set(re.findall(r'id="entry-(\d+)"', first)) & set(
        re.findall(r'id="entry-(\d+)"', second)
    )
    assert not rows  # no entry on both pages
    assert f'<strong id="statistics-count">{total}</strong>' in first
    assert re.search(r">PoisonMessage</a>\s*</td>\s*<td[^>]*>3</td>", first)  # by reason
    assert "ValueError @ test_flower_dead_letters.py:_add" in first  # by failure group


def test_batch_replay_dry_run_then_confirm_purge_and_delete(store: Store, authed: str):
    client = Client(authed)
    token = client.token()
    dry = client.request(
        "/dead-letters/replay-batch",
        [("reason", "ManualRejection"), ("dry_run", "1"), ("_xsrf", token)],
    )[1]
    assert "would replay 2 entries" in dry
    assert store.reliable.dead_letters.count(reason="ManualRejection", replayed=True) == 0
    confirm = dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)">', dry))
    assert confirm == {"reason": "ManualRejection", "limit": "2"}
    done = client.request("/dead-letters/replay-batch", [*confirm.items(), ("_xsrf", token)])[1]
    assert "replayed 2 entries" in done
    assert store.outbox_has("msg-batch-0")
    assert store.outbox_has("msg-batch-1")

    purge_dry = client.request(
        "/dead-letters/purge", [("older_than", "1ms"), ("dry_run", "1"), ("_xsrf", token)]
    )[1]
    assert f"would purge {store.reliable.dead_letters.count()} entries" in purge_dry
    purged = client.request("/dead-letters/purge", [("older_than", "3650d"), ("_xsrf", token)])[1]
    assert "purged 0 entries" in purged

    deleted = client.request(f"/dead-letters/{store.ids['delete']}/delete", [("_xsrf", token)])
    assert deleted[0] == 200
    assert "deleted entry" in deleted[1]
    assert store.entry("delete") is None


# -- a real browser ------------------------------------------------------------------------


def browser_binaries() -> tuple[str, str]:
    """(chromium, chromedriver); skip locally, fail under RELIABLE_REQUIRE_SERVICES=1."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    missing = [] if chromium else ["chromium"]
    missing += [] if driver else ["chromedriver"]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium")
    if missing:
        message = (
            f"{', '.join(missing)} not installed (apt-get install chromium chromium-driver; "
            "pip install selenium)"
        )
        if REQUIRE_SERVICES:
            pytest.fail(f"RELIABLE_REQUIRE_SERVICES=1 but {message}")
        pytest.skip(message)
    assert chromium
    assert driver
    return chromium, driver


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    chromium, driver = browser_binaries()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    # A desktop-sized window: below 992 px Flower's navbar collapses behind its toggler.
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1400,1000",
    ):
        options.add_argument(flag)
    chrome = webdriver.Chrome(service=Service(executable_path=driver), options=options)
    chrome.set_page_load_timeout(30)
    try:
        yield chrome
    finally:
        chrome.quit()


def test_in_chromium_filter_open_replay_and_dry_run(store: Store, open_flower: str, browser):
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    def find(css: str) -> Any:
        return browser.find_element(By.CSS_SELECTOR, css)

    pages = itertools.count()

    def click(css: str) -> None:
        """Click, and wait until the page it leads to has loaded (every click here navigates).

        The old page is stamped first and the new one must lack the stamp. Polling an old
        element for staleness instead races the navigation: Chromium can answer a query on a
        document being torn down with an "unhandled inspector error", so errors while the
        page changes are retried too.
        """
        stamp = f"page-{next(pages)}"
        browser.execute_script("document.documentElement.dataset.stamp = arguments[0]", stamp)
        find(css).click()
        loaded = (
            "return document.readyState === 'complete'"
            " && document.documentElement.dataset.stamp !== arguments[0]"
        )
        WebDriverWait(browser, 15, ignored_exceptions=(WebDriverException,)).until(
            lambda driver: driver.execute_script(loaded, stamp)
        )

    browser.get(open_flower + "/workers")  # Flower's own page, with our link in its navbar
    click("#nav-dead-letters")
    assert browser.current_url.endswith("/dead-letters")

    Select(find("#filter-reason")).select_by_value("MaxRetriesExceeded")
    click("#filter-submit")
    reasons = [e.text for e in browser.find_elements(By.CSS_SELECTOR, ".entry-reason")]
    assert reasons == ["MaxRetriesExceeded"]

    entry = store.ids["xss"]
    click(f"#entry-{entry} .entry-link")
    assert "ValueError: card declined for xss <b>bold</b>" in find("#traceback").text
    assert XSS in find("#args").text  # shown as text...
    assert browser.execute_script("return window.pwned === undefined")  # ...never run
    assert find("#attempts").text == "3"
    assert find("#replay-count").text == "0"

    click("#replay")
    assert find(".result-line").text == "replayed 1 of 1 entries"
    click(f"#outcomes a[href$='/dead-letters/{entry}']")
    assert find("#replay-count").text == "1"
    assert store.entry("xss").replay_count == 1
    assert store.outbox_has("msg-xss")

    click("#nav-dead-letters")
    Select(find("#filter-reason")).select_by_value("PoisonMessage")
    click("#filter-submit")
    click("#batch-dry-run")
    assert find(".result-line").text == "would replay 3 entries"
    assert find("#confirm").text == "Replay 3 entries"
    assert store.reliable.dead_letters.count(reason="PoisonMessage", replayed=True) == 0


def test_url_prefix_and_read_only_apply_to_our_pages(store: Store, tmp_path: Path):
    args = (f"--basic-auth={CREDENTIALS}", "--url_prefix=ops", "--read_only")
    with running_flower(store, tmp_path / "flower.log", *args) as url:
        client = Client(url)
        status, page = client.request("/ops/dead-letters")
        assert status == 200, page
        assert f'href="/ops/dead-letters/{store.ids["xss"]}"' in page
        assert 'id="replay-selected"' not in page  # no buttons that would change anything
        assert 'name="_xsrf"' not in page  # read-only: no forms that post
        entry = client.request(f"/ops/dead-letters/{store.ids['poison-0']}")[1]
        assert 'id="replay"' not in entry
        # A hand-made POST (the xsrf cookie's value is a valid token) is refused all the same.
        token = next(c.value for c in client.jar if c.name == "_xsrf")
        data = [("ids", str(store.ids["poison-0"])), ("_xsrf", token)]
        status, page = client.request("/ops/dead-letters/replay", data)
        assert status == 403
        assert "Flower runs with --read_only" in page
        assert store.entry("poison-0").replay_count == 0
        assert client.request("/dead-letters")[0] == 404  # only under the prefix
