"""The celery_reliable demo: ``python -m workers.demo``.

Runs the shop (workers/shop.py) with an embedded worker on the embedded default, a SQLite
store and a broker in a folder, inside a fresh temporary directory (removed afterwards
unless ``--keep``), and prints what happened. ``--verbose`` shows the worker's log. Set
CELERY_BROKER_URL / RELIABLE_DATABASE_URL to run it on real services.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
import time
import uuid

WORKDIR = tempfile.mkdtemp(prefix="celery-reliable-demo-")
os.chdir(WORKDIR)  # the embedded default store is a SQLite file in the working directory

from celery.contrib.testing.worker import start_worker  # noqa: E402
from sqlalchemy import func, select  # noqa: E402

from celery_reliable import (  # noqa: E402
    DEAD_LETTERED,
    DUPLICATE,
    MESSAGE_ID_HEADER,
    DeadLetter,
    DeadLettered,
)

from . import shop  # noqa: E402


def say(text: str) -> None:
    print(text, flush=True)


def payments(order_id: str) -> int:
    with shop.reliable.database.engine.connect() as conn:
        query = select(func.count()).where(shop.Payment.order_id == order_id)
        return int(conn.execute(query).scalar_one())


def receipts(order_id: str) -> int:
    with shop.reliable.database.engine.connect() as conn:
        query = select(func.count()).where(shop.Receipt.order_id == order_id)
        return int(conn.execute(query).scalar_one())


def wait_for_receipt(order_id: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while receipts(order_id) == 0:
        if time.monotonic() > deadline:
            raise SystemExit(f"demo: no receipt for {order_id}")
        time.sleep(0.05)


def charge_until_dead_lettered(order_id: str, amount_cents: int) -> DeadLetter:
    """Send a charge that is bound to fail, and return the dead-letter entry it ends in.

    The caller waits as with any Celery task: ``.get()`` raises ``DeadLettered``, which
    names the entry.
    """
    result = shop.charge.apply_async(
        (order_id, amount_cents), headers={MESSAGE_ID_HEADER: f"{order_id}-charge"}
    )
    try:
        value = result.get(timeout=60)
    except DeadLettered as dead:
        entry = shop.reliable.dead_letters.get(dead.entry_id)
        assert entry is not None
        return entry
    raise SystemExit(f"demo: {order_id} was charged ({value}) instead of dead-lettered")


def main() -> int:
    if "--verbose" not in sys.argv:  # the worker's own log lines would drown the story
        logging.disable(logging.CRITICAL)
    store = shop.reliable.database.url.render_as_string(hide_password=True)
    say(f"celery_reliable demo in {WORKDIR}")
    say(f"  broker {shop.app.conf.broker_url}   store {store}\n")
    shop.create_tables()
    run = uuid.uuid4().hex[:6]
    with start_worker(  # a busy machine can take more than Celery's default 10 s to stop
        shop.app,
        pool="threads",
        concurrency=2,
        perform_ping_check=False,
        loglevel="ERROR",
        shutdown_timeout=60,
    ):
        order = f"order-{run}-1"
        shop.place_order(order, 4200)
        published = shop.reliable.relay.drain()  # what `reliable relay` does all the time
        wait_for_receipt(order)
        say(
            f"1. {order} placed: the order and its receipt message committed together; "
            f"the relay published {published} message -> receipts: {receipts(order)}"
        )
        headers = {MESSAGE_ID_HEADER: f"{order}-charge"}
        first = shop.charge.apply_async((order, 4200), headers=headers)
        say(f"2. charge {order}: {first.get(timeout=30)} -> payments: {payments(order)}")

        again = shop.charge.apply_async((order, 4200), headers=headers)
        original = again.get(timeout=30)
        say(
            f"3. the same charge delivered again (message id {order}-charge): a {DUPLICATE}, "
            f"not run; .get() returns the original result {original} -> payments still: "
            f"{payments(order)}"
        )

        flaky = f"order-{run}-2"
        shop.provider_down(flaky, runs=1)
        result = shop.charge.apply_async(
            (flaky, 990), headers={MESSAGE_ID_HEADER: f"{flaky}-charge"}
        )
        value = result.get(timeout=30)
        row = shop.reliable.store.get_status(f"{flaky}-charge", "shop.charge-card")
        say(
            f"4. {flaky}: payment provider down once, inside the transaction (rolled back), "
            f"retried: "
            f"{value} after {row.attempts if row else '?'} attempts -> payments: {payments(flaky)}"
        )

        doomed = f"order-{run}-3"
        shop.provider_down(doomed, runs=99)
        entry = charge_until_dead_lettered(doomed, 500)
        say(
            f"5. {doomed}: provider down every time -> {DEAD_LETTERED} after {entry.attempts} runs "
            f"(payment-retry: 2 retries), dead-letter entry {entry.id}: {entry.reason.value}, "
            f"{entry.exception_type}: {entry.exception_message} -> payments: {payments(doomed)}"
        )

        declined = f"order-{run}-4"
        refused = charge_until_dead_lettered(declined, 0)
        say(
            f"6. {declined}: card declined (a poison exception) -> {DEAD_LETTERED} after "
            f"{refused.attempts} run, no retries: {refused.reason.value}; the circuit breaker "
            f"stays {shop.reliable.breakers.states()['payment-provider']}"
        )

        shop.provider_up(doomed)  # the payment provider is back
        replay_id = shop.reliable.dead_letters.replay(entry.id)
        shop.reliable.relay.drain()  # what `celery -A workers.shop reliable relay` does
        replayed = shop.app.AsyncResult(replay_id)
        say(
            f"7. after the fix, `reliable dlq replay {entry.id}` + relay: "
            f"{replayed.get(timeout=30)} -> payments: {payments(doomed)}"
        )
    ok = (
        receipts(order) == 1
        and payments(order) == 1
        and payments(flaky) == 1
        and payments(doomed) == 1
        and payments(declined) == 0
    )
    say("\nexactly-once effects held" if ok else "\nUNEXPECTED: effects were not exactly once")
    return 0 if ok else 1


if __name__ == "__main__":
    try:
        status = main()
    finally:
        shop.reliable.database.dispose()
        os.chdir(os.path.dirname(WORKDIR))
        if "--keep" not in sys.argv:
            shutil.rmtree(WORKDIR, ignore_errors=True)
    sys.exit(status)
