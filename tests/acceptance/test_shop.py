"""The README's production-style commands for the example shop, each in its own process.

`db upgrade`, a worker, a relay and beat run as a new user would start them, on the
embedded default (SQLite store, a broker in a folder); an order placed from the command
line reaches the worker through the outbox and the relay, exactly once.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from celery_reliable.testing import wait_for
from tests.support import ROOT, celery_process

from .flower_support import dead_letters_page
from .test_flower import free_port

SHOP = "workers.shop"


@pytest.fixture
def shop_env(tmp_path: Path) -> dict[str, str]:
    """Environment that keeps the shop's broker folder and store inside ``tmp_path``."""
    return {
        "SHOP_BROKER_DIR": str(tmp_path / "broker"),
        "RELIABLE_DATABASE_URL": f"sqlite:///{tmp_path / 'shop.sqlite3'}",
        "CELERY_BROKER_URL": "filesystem://",
        "PYTHONPATH": str(ROOT),
    }


def python(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``python ARGS`` from the repository's root, as a user runs the shop and celery."""
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def run(env: dict[str, str], *args: str) -> str:
    result = python(env, *args)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def receipts(env: dict[str, str], order_id: str) -> int:
    engine = create_engine(env["RELIABLE_DATABASE_URL"])
    try:
        with engine.connect() as conn:
            query = text("SELECT count(*) FROM shop_receipt WHERE order_id = :o")
            return int(conn.execute(query, {"o": order_id}).scalar_one())
    finally:
        engine.dispose()


def test_worker_relay_and_beat_as_separate_processes(shop_env: dict[str, str], tmp_path: Path):
    assert "store at revision" in run(
        shop_env, "-m", "celery", "-A", SHOP, "reliable", "db", "upgrade"
    )
    processes = [
        celery_process(
            ["-A", SHOP, "worker", "--loglevel=INFO", "-P", "threads"],
            shop_env,
            tmp_path / "worker.log",
        ),
        celery_process(["-A", SHOP, "reliable", "relay"], shop_env, tmp_path / "relay.log"),
        celery_process(
            ["-A", SHOP, "beat", "--loglevel=INFO", f"--schedule={tmp_path / 'schedule'}"],
            shop_env,
            tmp_path / "beat.log",
        ),
    ]
    worker, relay, _ = processes
    try:
        placed = run(shop_env, "-m", SHOP, "order-1", "4200")
        assert "order order-1 placed" in placed
        wait_for(lambda: receipts(shop_env, "order-1") == 1, 60, 0.1, what="the receipt")
        # Both jobs run as soon as beat starts, long before their intervals (1 h, 1 min).
        for job in ("cleanup", "recover_stuck"):
            ran = re.compile(rf"Task celery_reliable\.{job}\[[^]]+\] succeeded")
            wait_for(lambda r=ran: r.search(worker.output()), 30, 0.2, what=f"beat's {job} run")
        for process in processes:
            assert process.proc.poll() is None, process.output()
    finally:
        for process in processes:
            process.stop()
    assert receipts(shop_env, "order-1") == 1  # exactly once
    assert not (ROOT / "control").exists()  # the broker stays in its folder, not the checkout
    assert relay.proc.returncode == 0, relay.output()  # SIGTERM: finished its batch, exited


def test_a_bad_order_command_says_how_to_use_it(shop_env: dict[str, str]):
    result = python(shop_env, "-m", SHOP, "order-1", "lots")
    assert result.returncode == 2
    assert "usage: python -m workers.shop ORDER_ID AMOUNT_CENTS" in result.stderr


def test_flower_with_the_dead_letters_page_starts_as_the_readme_says(
    shop_env: dict[str, str], tmp_path: Path
):
    run(shop_env, "-m", "celery", "-A", SHOP, "reliable", "db", "upgrade")
    port = free_port()
    flower = celery_process(
        [
            "-A",
            SHOP,
            "reliable",
            "flower",
            "--address=127.0.0.1",
            "--dead-letters-allow-unauthenticated",
            f"--port={port}",
        ],
        shop_env,
        tmp_path / "flower.log",
    )
    try:
        html = dead_letters_page(flower, port)
    finally:
        flower.stop()
    assert "<title>Dead letters · Flower</title>" in html


def payments(env: dict[str, str], order_id: str) -> int:
    engine = create_engine(env["RELIABLE_DATABASE_URL"])
    try:
        with engine.connect() as conn:
            query = text("SELECT count(*) FROM shop_payment WHERE order_id = :o")
            return int(conn.execute(query, {"o": order_id}).scalar_one())
    finally:
        engine.dispose()


def test_each_failure_from_the_command_line_then_a_replay(shop_env: dict[str, str], tmp_path: Path):
    """The README's failure walk-through: a declined card and a provider outage end as
    dead letters; once the provider is back, the replay charges the order once."""
    run(shop_env, "-m", "celery", "-A", SHOP, "reliable", "db", "upgrade")
    worker = celery_process(
        ["-A", SHOP, "worker", "--loglevel=INFO", "-P", "threads"],
        shop_env,
        tmp_path / "worker.log",
    )
    relay = celery_process(["-A", SHOP, "reliable", "relay"], shop_env, tmp_path / "relay.log")

    def dead_letters() -> dict[str, str]:
        listed = run(shop_env, "-m", "celery", "-A", SHOP, "reliable", "dlq", "list", "--json")
        return {e["message_id"]: e["reason"] for e in json.loads(listed)}

    try:
        assert "(card-declined)" in run(
            shop_env, "-m", SHOP, "charge", "order-2", "4200", "--card-declined"
        )
        assert "(provider-down)" in run(
            shop_env, "-m", SHOP, "charge", "order-3", "4200", "--provider-down"
        )
        expected = {"order-2-charge": "PoisonMessage", "order-3-charge": "MaxRetriesExceeded"}
        wait_for(lambda: dead_letters() == expected, 60, 0.5, what="two dead letters")
        assert "provider is back" in run(shop_env, "-m", SHOP, "provider-up")
        replayed = run(
            shop_env, "-m", "celery", "-A", SHOP, "reliable", "dlq", "replay",
            "--reason", "MaxRetriesExceeded",
        )  # fmt: skip
        assert replayed.strip() == "replayed 1 entry"
        wait_for(lambda: payments(shop_env, "order-3") == 1, 60, 0.2, what="the replayed charge")
        assert worker.proc.poll() is None, worker.output()
        log = worker.output()
    finally:
        relay.stop()
        worker.stop()
    assert payments(shop_env, "order-3") == 1  # once: the three failed runs rolled back
    assert payments(shop_env, "order-2") == 0  # declined: nothing charged
    # Each dead letter ends with one line of ours that says what happened and where it is
    # kept; Celery's own line for it is one line too ("raised expected"), no traceback.
    for message, ending in (
        ("order-2-charge", "PoisonMessage: entry 1: workers.shop.CardDeclined: order-2: card"),
        ("order-3-charge", "MaxRetriesExceeded: entry 2: workers.shop.ProviderUnavailable"),
    ):
        (line,) = [line for line in log.splitlines() if f"message {message} (" in line]
        assert "ERROR" in line
        assert f"dead-lettered as {ending}" in line, line
    assert log.count("raised expected: DeadLettered(") == 2, log
    assert "Traceback" not in log, log


@pytest.mark.parametrize(
    ("store", "says"),
    [
        ("not migrated", "run `celery -A workers.shop reliable db upgrade`"),
        (
            "unreachable",
            "the reliable store postgresql+psycopg://postgres@127.0.0.1:1/test is unreachable",
        ),
    ],
)
def test_the_shop_without_its_store_says_so_in_one_line(
    shop_env: dict[str, str], store: str, says: str
):
    """What a new user meets who skipped `db upgrade`, or whose database is down: one
    line naming what to do, as the `celery reliable` commands say it (not 100 lines)."""
    if store == "unreachable":
        shop_env = {
            **shop_env,
            "RELIABLE_DATABASE_URL": "postgresql+psycopg://postgres@127.0.0.1:1/test",
        }
    result = python(shop_env, "-m", SHOP, "order-1", "4200")
    assert result.returncode == 3, result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith("error: ")
    assert says in line


def test_a_charge_takes_one_fault_at_most(shop_env: dict[str, str]):
    result = python(shop_env, "-m", SHOP, "charge", "o", "1", "--card-declined", "--provider-down")
    assert result.returncode == 2
    assert "--card-declined | --provider-down" in result.stderr
