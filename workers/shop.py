"""A small shop whose payments must happen exactly once.

An order is written with SQLAlchemy and, in the same transaction, its receipt is enqueued
through the outbox; a relay publishes it after the commit. Charging a card runs behind a
circuit breaker (an outage of the payment provider stops the charges instead of burning
their retries) and under a retry policy; a charge that never succeeds ends in the
dead-letter store, and a declined card is dead-lettered at once (retrying cannot help).

Run it for real (the embedded default needs no server), from the repository's root:

    celery -A workers.shop reliable db upgrade
    celery -A workers.shop worker --loglevel=INFO     # runs the tasks
    celery -A workers.shop reliable relay             # publishes what the outbox holds
    celery -A workers.shop beat                       # cleanup and stuck recovery
    python -m workers.shop order-1 4200               # places an order (and its receipt)

and see a failure end as a dead letter, then replay it:

    python -m workers.shop charge order-2 4200 --card-declined   # dead-lettered at once
    python -m workers.shop charge order-3 4200 --provider-down   # retried, dead-lettered
    celery -A workers.shop reliable dlq list
    python -m workers.shop provider-up                           # the fault is fixed
    celery -A workers.shop reliable dlq replay ID                # order-3 charged once

``CELERY_BROKER_URL`` and ``RELIABLE_DATABASE_URL`` switch it to Redis/RabbitMQ and
PostgreSQL/MySQL, e.g. ``redis://127.0.0.1:6379/0`` and
``postgresql+psycopg://postgres@127.0.0.1:5432/test``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from celery import Celery
from sqlalchemy import Integer, String
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from celery_reliable import ConfigurationError, Reliable, ReliableTask, RetryPolicy
from celery_reliable.cli.base import store_problem

BROKER_DIR = Path(os.environ.get("SHOP_BROKER_DIR", ".broker"))


def _config() -> dict[str, object]:
    broker = os.environ.get("CELERY_BROKER_URL", "filesystem://")
    (BROKER_DIR / "results").mkdir(parents=True, exist_ok=True)
    config: dict[str, object] = {
        "broker_url": broker,
        "result_backend": os.environ.get(
            "CELERY_RESULT_BACKEND", f"file://{BROKER_DIR.resolve()}/results"
        ),
        "broker_connection_retry_on_startup": True,
        "reliable_max_attempts": 5,
    }
    if os.environ.get("RELIABLE_DATABASE_URL"):
        config["reliable_database_url"] = os.environ["RELIABLE_DATABASE_URL"]
    if broker.startswith("filesystem"):
        # kombu's filesystem transport: a broker in a folder, for one host and no server
        # (with atomic publishing, see workers/fs_broker.py).
        config["broker_transport"] = "workers.fs_broker:Transport"
        for sub in ("queue", "control"):
            (BROKER_DIR / sub).mkdir(parents=True, exist_ok=True)
        config["broker_transport_options"] = {
            "data_folder_in": str(BROKER_DIR / "queue"),
            "data_folder_out": str(BROKER_DIR / "queue"),
            # Fanout exchanges (remote control, events); kombu's default is ./control.
            "control_folder": str(BROKER_DIR / "control"),
            "polling_interval": 0.05,
        }
    return config


# Named as ``-A`` names it, so that a hint says ``celery -A workers.shop ...`` even where no
# ``celery`` command was typed (``python -m workers.shop``).
app = Celery("workers.shop")
app.conf.update(_config())
reliable = Reliable(app)
# Two retries, 0.2 s then about 0.4 s apart; then the message is dead-lettered.
reliable.retry_policies["payment-retry"] = RetryPolicy.exponential(
    max_retries=2, base_delay=0.2, max_delay=1
)


class Base(DeclarativeBase):
    pass


class Order(Base):
    __tablename__ = "shop_order"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    amount_cents: Mapped[int] = mapped_column(Integer)


class Receipt(Base):
    """One row per receipt sent; a duplicate would show as a second row."""

    __tablename__ = "shop_receipt"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    order_id: Mapped[str] = mapped_column(String(64))


class Payment(Base):
    """One row per charge; a duplicate charge would show as a second row."""

    __tablename__ = "shop_payment"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    order_id: Mapped[str] = mapped_column(String(64))
    amount_cents: Mapped[int] = mapped_column(Integer)


def create_tables() -> None:
    """The store's tables (migrations) and the shop's own."""
    reliable.create_schema()
    Base.metadata.create_all(reliable.database.engine)


class Outage(Base):
    """Runs of an order's charge that will still find the payment provider down: a fault
    injected by the demo or by ``python -m workers.shop charge ... --provider-down``. In the
    database, so that a worker in another process sees it."""

    __tablename__ = "shop_outage"
    order_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    runs: Mapped[int] = mapped_column(Integer)


def provider_down(order_id: str, runs: int) -> None:
    """The next ``runs`` charges of ``order_id`` find the payment provider down."""
    with Session(reliable.database.engine) as session, session.begin():
        session.merge(Outage(order_id=order_id, runs=runs))


def provider_up(order_id: str | None = None) -> None:
    """The payment provider is back (for one order, or all)."""
    with Session(reliable.database.engine) as session, session.begin():
        query = session.query(Outage)
        if order_id is not None:
            query = query.filter(Outage.order_id == order_id)
        query.delete()


def _provider_is_down(order_id: str) -> bool:
    """Take one outage run, in its own transaction (the charge's own is rolled back)."""
    with Session(reliable.database.engine) as session, session.begin():
        outage = session.get(Outage, order_id, with_for_update=True)
        if outage is None or outage.runs <= 0:
            return False
        outage.runs -= 1
        return True


class ProviderUnavailable(Exception):
    """The payment provider did not answer (the demo injects it): worth retrying."""


class CardDeclined(Exception):
    """The provider answered no: retrying cannot help, and the provider is not at fault."""


# Five outages in a row open the breaker for every worker (shared through Redis when
# `reliable_redis_url` is set); charges then wait instead of failing, and after 30 s one
# charge probes the provider. A declined card is an answer, so it does not count.
reliable.breakers.configure(
    "payment-provider", failure_threshold=5, reset_timeout=30, exclude=[CardDeclined]
)


@app.task(
    base=ReliableTask,
    bind=True,
    handler_key="shop.charge-card",
    retry_policy="payment-retry",
    circuit_breaker="payment-provider",
    poison_exceptions=(CardDeclined,),
)
def charge(
    self: ReliableTask, order_id: str, amount_cents: int, card: str = "valid"
) -> dict[str, object]:
    """Record the payment; the row and the 'done' mark commit together or not at all.

    ``card="declined"`` (or an amount <= 0) is a card the provider declines.
    """
    provider_down = _provider_is_down(order_id)
    with self.transaction() as session:
        session.add(Payment(order_id=order_id, amount_cents=amount_cents))
        if card == "declined" or amount_cents <= 0:
            raise CardDeclined(f"{order_id}: card declined for {amount_cents}")
        if provider_down:
            # Raised inside the transaction: the payment row above is rolled back, and the
            # retry policy decides what happens next.
            raise ProviderUnavailable(order_id)
    return {"order_id": order_id, "charged": amount_cents}


@app.task(base=ReliableTask, bind=True, handler_key="shop.send-receipt")
def send_receipt(self: ReliableTask, order_id: str) -> str:
    """Record the receipt (an email in real life: pass the message id as idempotency key)."""
    with self.transaction() as session:
        session.add(Receipt(order_id=order_id))
    return f"receipt for {order_id}"


def place_order(order_id: str, amount_cents: int) -> str:
    """The web request: the order and its receipt message commit together, or neither.

    Returns the receipt's message id. Nothing reaches the broker until a relay publishes
    the committed row, so a rolled-back order never sends a receipt.
    """
    with Session(reliable.database.engine) as session, session.begin():
        session.add(Order(id=order_id, amount_cents=amount_cents))
        return reliable.outbox.enqueue(
            session, send_receipt.s(order_id), message_id=f"{order_id}-receipt"
        )


def send_charge(order_id: str, amount_cents: int, card: str = "valid") -> str:
    """Charge an order through the outbox (message id ``ORDER_ID-charge``); its id."""
    with Session(reliable.database.engine) as session, session.begin():
        return reliable.outbox.enqueue(
            session,
            charge.s(order_id, amount_cents, card=card),
            message_id=f"{order_id}-charge",
        )


USAGE = """\
usage: python -m workers.shop ORDER_ID AMOUNT_CENTS
       python -m workers.shop charge ORDER_ID AMOUNT_CENTS [--card-declined | --provider-down]
       python -m workers.shop provider-up

An order and its receipt; a charge, with a card the provider declines (dead-lettered at
once) or a provider outage (retried, then dead-lettered) until `provider-up` ends it."""
FAULTS = {"--card-declined", "--provider-down"}


def main(argv: list[str]) -> int:
    """What a web request would do, and the faults that show a dead letter and a replay.

    Bad arguments print the usage (exit 2). A store that is down or was never migrated is
    one line on stderr and exit 3, as the ``celery reliable`` commands say it: what a new
    user meets first.
    """
    command, args = ("charge", argv[1:]) if argv[:1] == ["charge"] else ("order", argv)
    faults = [a for a in args if a in FAULTS]
    args = [a for a in args if a not in FAULTS]
    bad = len(args) != 2 or not args[1].isdigit() or len(faults) > (command == "charge")
    if argv != ["provider-up"] and bad:
        print(USAGE, file=sys.stderr)
        return 2
    try:
        Base.metadata.create_all(reliable.database.engine)  # the shop's own tables, if missing
        reliable.check_schema()  # the store's: `celery -A workers.shop reliable db upgrade`
        if argv == ["provider-up"]:
            provider_up()
            print("the payment provider is back: replay its dead letters (`reliable dlq replay`)")
        elif command == "order":
            message_id = place_order(args[0], int(args[1]))
            print(f"order {args[0]} placed; receipt message {message_id} waits for the relay")
        else:
            if "--provider-down" in faults:
                provider_down(args[0], runs=1_000_000)  # until `provider-up`
            card = "declined" if "--card-declined" in faults else "valid"
            message_id = send_charge(args[0], int(args[1]), card=card)
            fault = f" ({faults[0][2:]})" if faults else ""
            print(f"charge {message_id} waits for the relay{fault}")
        return 0
    except ConfigurationError as exc:
        print(f"error: {exc}", file=sys.stderr)
    except DBAPIError as exc:  # down, or refusing (an order id used twice): as the CLI says
        print(f"error: {store_problem(reliable, exc)}", file=sys.stderr)
    return 3


if __name__ == "__main__":
    # Run with -m, this file is ``__main__`` and its tasks would be named ``__main__.*``;
    # the workers know them as ``workers.shop.*``, so use the imported module's objects.
    from workers.shop import main as shop_main

    sys.exit(shop_main(sys.argv[1:]))
