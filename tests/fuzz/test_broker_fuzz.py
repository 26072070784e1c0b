"""Fuzz: malformed messages pushed straight into the broker all end as dead letters.

A real ``celery worker`` (tests/acceptance/worker_app.py: a ``ReliableTask`` app, prefork)
on each stack of the acceptance tier (Redis with PostgreSQL and with SQLite, RabbitMQ with
PostgreSQL and with MariaDB) gets a seeded batch of malformed messages
(tests/fuzz/messages.py) published past Celery. Then:

- every message is in the dead-letter store, once, with the reason its class must get
  (matched by its body's bytes, or its unique argument): the count per reason is what
  was sent per reason, and nothing else is there;
- nothing was unpickled (the pickles would have left a file);
- the worker process never exited, never restarted its consumer (what Celery does when
  a message makes its handler raise), and still runs a valid message afterwards, with
  the queue empty.

``RELIABLE_FUZZ_MESSAGES`` messages per stack: 2,500 by default, 10,000 in all, about a
minute for each stack on a 2-core box. ``RELIABLE_FUZZ_SEED`` replays a run (the seed is
printed; ``-s`` shows it).
"""

from __future__ import annotations

import json
import os
import random
import time
from collections import Counter
from typing import Any

import pytest
from sqlalchemy import select

from tests.acceptance.intake import still_working

from .messages import Generator, Malformed, args_print, body_print, by_kind
from .publish import publish_all

MESSAGES = int(os.environ.get("RELIABLE_FUZZ_MESSAGES", "2500"))
SEED = int(os.environ.get("RELIABLE_FUZZ_SEED", str(random.randrange(1_000_000))))
#: Generous: a message takes 4-12 ms on a loaded 2-core box.
DRAIN_SECONDS = 60 + MESSAGES * 0.03
#: Messages the worker holds at once. With one, throughput is bound by Celery acknowledging
#: an expired message from its event loop's next turn (up to a second later); well within
#: the Redis visibility timeout of tests/support.make_app (3 s) at this rate.
PREFETCH = 32
#: What an entry cut to fit one MySQL statement says (dead_letters/fitting.py).
CUT = "raw body cut to"
#: What a worker log shows when a message broke Celery's consumer instead of being handled.
SYMPTOMS = (
    "Unrecoverable error",
    "Frequent restarts detected",
    "Connection to broker lost",
    "Internal error",
    "could not dead-letter a message",
    "the store is unavailable",
)

pytestmark = pytest.mark.services


def stored(stack: Any, messages: list[Malformed]) -> Counter[tuple[str, tuple[str, str]]]:
    """(reason, fingerprint) of every entry, as messages.py fingerprints what it sends.

    On MySQL/MariaDB an entry over half of ``max_allowed_packet`` has its raw body cut, and
    says so in its exception message (dead_letters/fitting.py): such an entry stands for
    the one huge message whose body starts with the bytes kept.
    """
    t = stack.reliable.tables.dead_letter
    query = select(t.c.reason, t.c.raw_body, t.c.args, t.c.exception_message)
    huge = [m for m in messages if m.kind == "huge"]
    got: Counter[tuple[str, tuple[str, str]]] = Counter()
    with stack.reliable.database.engine.connect() as conn:
        for reason, raw, args, note in conn.execute(query):
            if raw is None:
                got[reason, args_print(_loads(args))] += 1
            elif CUT in (note or ""):
                whole = [m for m in huge if m.body.startswith(raw) and len(m.body) > len(raw)]
                assert len(whole) == 1, f"a cut body matches {len(whole)} sent messages"
                got[reason, whole[0].fingerprint] += 1
            else:
                got[reason, body_print(raw)] += 1
    return got


def _loads(args: str | None) -> Any:
    return None if args is None else json.loads(args)


def explain(
    messages: list[Malformed],
    expected: Counter[tuple[str, tuple[str, str]]],
    got: Counter[tuple[str, tuple[str, str]]],
) -> str:
    """Which classes lost messages or got a wrong reason, with an example of each."""
    sent = {m.fingerprint: m for m in messages}
    lines = []
    for title, diff in (("missing", expected - got), ("unexpected", got - expected)):
        kinds = Counter(
            (sent[fp].kind if fp in sent else "?", reason) for reason, fp in diff.elements()
        )
        lines.append(f"{title}: {dict(kinds)}")
        for (reason, fp), _ in list(diff.items())[:5]:
            m = sent.get(fp)
            shown = (
                f"{m.kind} {m.content_type!r:.60} {m.headers!r:.200} {m.body[:80]!r}" if m else fp
            )
            lines.append(f"  {reason}: {shown}")
    return "\n".join(lines)


@pytest.mark.timeout(int(DRAIN_SECONDS) + 180)
def test_every_malformed_message_is_dead_lettered_with_its_reason(stack):
    transport = "redis" if stack.broker.startswith("redis") else "amqp"
    markers = stack.dir / "markers"
    markers.mkdir()
    messages = Generator(SEED, transport, markers).batch(MESSAGES)
    kinds = ", ".join(f"{kind} {n}" for kind, n in by_kind(messages))
    print(f"\nfuzz seed {SEED} on {transport}: {len(messages)} messages ({kinds})")
    expected = Counter((m.expected.value, m.fingerprint) for m in messages)
    letters = stack.reliable.dead_letters

    with stack.worker(RT_PREFETCH=str(PREFETCH)) as worker:
        started = time.monotonic()
        publish_all(stack, messages)
        deadline = started + DRAIN_SECONDS
        while letters.count() < len(messages) and time.monotonic() < deadline:
            assert worker.proc.poll() is None, worker.output()[-3000:]
            time.sleep(0.2)
        elapsed = time.monotonic() - started
        reasons = Counter(m.expected.value for m in messages)
        print(f"{len(messages)} messages in {elapsed:.1f}s: {dict(reasons)}")
        # Equal multisets of (reason, body): every message there once, with its reason, so
        # the count per reason is the count sent per reason.
        # On MySQL a huge entry may keep its arguments without the raw body, or keep a cut
        # raw body (see stored()): the same message.
        aliases = {m.args_fingerprint: m.fingerprint for m in messages if m.args_fingerprint}
        entries = stored(stack, messages)
        got = Counter({(reason, aliases.get(fp, fp)): n for (reason, fp), n in entries.items()})
        assert got == expected, explain(messages, expected, got)
        still_working(stack, worker)

    assert not list(markers.iterdir()), "a pickle payload was unpickled"
    log = worker.output()
    for symptom in SYMPTOMS:
        assert symptom not in log, symptom
