"""Fuzz: hostile filters, ids and form values on the Flower Dead Letters page.

A real ``celery reliable flower`` process behind basic auth, on a PostgreSQL store. Every
answer is a page (200, an empty result where a filter matches nothing) or a 4xx with a
message; never a 500 (Flower answers a 500 with the traceback as text), never a value
reflected unescaped, and nothing changed by a request that was refused.
"""

from __future__ import annotations

import os
import pickle
import random
import re
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from celery_reliable import Reliable
from celery_reliable.dead_letters import FailedMessage
from celery_reliable.testing import drop_store
from tests.acceptance.flower_support import CREDENTIALS, Client, Store, running_flower
from tests.acceptance.intake import LeavesAMark
from tests.support import make_app, require, unique

from .hostile import BAD_DURATIONS, BAD_MOMENTS, TOO_BIG, tokens

SEED = int(os.environ.get("RELIABLE_FUZZ_SEED", str(random.randrange(1_000_000))))
#: What may answer hostile input: a page, a refusal, a missing entry.
FINE = {200, 400, 404}

pytestmark = pytest.mark.services


@dataclass
class Page:
    store: Store
    client: Client
    token: str
    marker: os.PathLike[str]

    def get(self, path: str, **query: str) -> tuple[int, str]:
        return self.client.request(f"{path}?{urllib.parse.urlencode(query)}" if query else path)

    def post(self, path: str, **form: str) -> tuple[int, str]:
        return self.client.request(path, [*form.items(), ("_xsrf", self.token)])

    def snapshot(self) -> tuple[int, int, int]:
        letters = self.store.reliable.dead_letters
        outbox = self.store.reliable.admin.outbox_stats().due
        return letters.count(), letters.count(replayed=True), outbox


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Page]:
    url = require("postgresql")
    prefix = unique()
    directory = tmp_path_factory.mktemp("flower-fuzz")
    reliable = Reliable.of(make_app("memory://", url, prefix))
    reliable.create_schema()
    marker = directory / "unpickled"
    ids = {}
    for n, reason in enumerate(("PoisonMessage", "DeserializationFailed")):
        message = FailedMessage(
            message_id=f"m-{n}",
            task_id=f"t-{n}",
            task_name="effect",
            args=None,
            kwargs=None,
            raw_body=pickle.dumps(LeavesAMark(marker)),
            content_type="application/x-python-serialize",
        )
        ids[reason] = reliable.dead_letters.add(message, reason, detail="<b>stored</b>")
    env = {"RT_BROKER": "memory://", "RT_DB": url, "RT_PREFIX": prefix, "RT_DIR": str(directory)}
    store = Store(reliable, env, ids)
    with running_flower(store, directory / "flower.log", f"--basic-auth={CREDENTIALS}") as base:
        client = Client(base)
        yield Page(store, client, client.token(), marker)
    reliable.database.dispose()
    drop_store(url, prefix)


def answered(status: int, body: str, *values: str) -> None:
    """A page or a refusal with a message; no traceback; markup never echoed as markup."""
    assert status in FINE, (status, body[:2000])
    # Python's own traceback (a 500 page shows one); an entry's page has a "Traceback"
    # label of its own, which a random id such as "1" can open.
    assert "Traceback (most recent call last)" not in body
    if status == 400 and 'id="error-message"' in body:
        assert re.search(r'id="error-message">[^<]+</div>', body), body
    for value in values:
        if "<" in value:
            assert value not in body, f"reflected unescaped: {value!r}"


@pytest.mark.parametrize(
    ("query", "says"),
    [
        *(({"since": value}, "since:") for value in BAD_MOMENTS),
        *(({"until": value}, "until:") for value in BAD_MOMENTS),
        *(({"offset": value}, "offset must be") for value in TOO_BIG),
        *(({"limit": value}, "limit must be") for value in TOO_BIG),
        ({"task": "x" * 256}, "task is longer than 255 characters"),
        ({"reason": "<script>alert(1)</script>"}, "unknown reason &#x27;&lt;script&gt;"),
        ({"replayed": "<img src=x onerror=alert(1)>"}, "replayed must be"),
    ],
)
def test_a_bad_filter_is_400_with_a_message(page: Page, query: dict[str, str], says: str):
    status, body = page.get("/dead-letters", **query)
    assert status == 400, body[:2000]
    assert says in body
    answered(status, body, *query.values())


def test_text_that_is_not_utf8_or_has_control_characters_is_no_500(page: Page):
    status, body = page.client.request("/dead-letters?task=%FF%FE")
    assert status == 400  # Tornado's refusal: "Invalid unicode"
    answered(status, body)
    status, body = page.get("/dead-letters", task="\x00\x07")  # Tornado blanks them
    assert status == 200
    answered(status, body)


@pytest.mark.parametrize(
    "value", ["'; DROP TABLE dead_letter; --", "<script>alert(1)</script>", "%s%n", "\u202e"]
)
def test_a_hostile_task_filter_is_an_empty_result_shown_escaped(page: Page, value: str):
    status, body = page.get("/dead-letters", task=value)
    assert status == 200, body[:2000]
    assert 'class="dead-letter-row"' not in body
    answered(status, body, value)
    assert page.store.reliable.dead_letters.count() == 2  # the table is still there


@pytest.mark.parametrize(
    ("raw_id", "says"),
    [
        *((value, "entry id must be") for value in TOO_BIG),
        ("%00", "entry id must be a whole number"),
        ("%3Csvg%20onload%3Dalert(1)%3E", "not &#x27;&lt;svg onload=alert(1)&gt;&#x27;"),
        ("1e3", "entry id must be a whole number"),
    ],
)
def test_a_bad_entry_id_is_400(page: Page, raw_id: str, says: str):
    status, body = page.client.request(f"/dead-letters/{raw_id}")
    assert status == 400, body[:2000]
    assert says in body
    answered(status, body, urllib.parse.unquote(raw_id))


@pytest.mark.parametrize(
    ("path", "form", "says"),
    [
        *(
            ("/dead-letters/purge", {"older_than": value, **dry}, "older than:")
            for value in BAD_DURATIONS
            if value
            for dry in ({}, {"dry_run": "1"})
        ),
        ("/dead-letters/purge", {"older_than": ""}, "older than:"),
        *(("/dead-letters/replay", {"ids": value}, "entry id must be") for value in TOO_BIG),
        *(
            ("/dead-letters/replay-batch", {"reason": "PoisonMessage", "limit": value}, "limit")
            for value in TOO_BIG
        ),
        ("/dead-letters/replay-batch", {"since": "1000000d", "dry_run": "1"}, "since:"),
        ("/dead-letters/replay-batch", {"reason": "<b>x</b>"}, "unknown reason &#x27;&lt;b&gt;"),
    ],
)
def test_a_bad_action_is_400_and_changes_nothing(
    page: Page, path: str, form: dict[str, str], says: str
):
    before = page.snapshot()
    status, body = page.post(path, **form)
    assert status == 400, body[:2000]
    assert says in body
    answered(status, body, *form.values())
    assert page.snapshot() == before


def test_random_hostile_values_never_give_a_500_and_change_nothing(page: Page):
    """Seeded random values in every filter, id and (dry-run) action field."""
    before = page.snapshot()
    fields = ("reason", "task", "since", "until", "replayed", "limit", "offset")
    for value in tokens(SEED, 40, utf8_only=True):
        answers = [page.get("/dead-letters", **{name: value}) for name in fields]
        answers.append(page.client.request(f"/dead-letters/{urllib.parse.quote(value, safe='')}"))
        answers.append(page.post("/dead-letters/purge", older_than=value, dry_run="1"))
        answers.append(
            page.post("/dead-letters/replay-batch", since=value, task=value, dry_run="1")
        )
        for status, body in answers:
            try:
                answered(status, body, value)
            except AssertionError as exc:
                raise AssertionError(f"seed {SEED}: value {value!r}: {exc}") from None
    assert page.snapshot() == before
    status, body = page.get(f"/dead-letters/{page.store.ids['PoisonMessage']}")
    assert status == 200
    assert "&lt;b&gt;stored&lt;/b&gt;" in body
    assert not os.path.exists(page.marker), "a stored pickle was unpickled"
