"""The chaos kit itself (celery_reliable.testing), against a local echo server and sleepers."""

from __future__ import annotations

import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import suppress

import pytest

from celery_reliable.testing import (
    FaultyLink,
    KillLoop,
    ProcessGroup,
    WaitTimeout,
    assert_exactly_once,
    check_exactly_once,
    wait_for,
    wait_for_exactly_once,
)

SLEEPER = [sys.executable, "-c", "import time; time.sleep(120)"]


@pytest.fixture
def echo() -> Iterator[tuple[str, int]]:
    """A TCP server answering each chunk with it, and with 4 KiB of b"x" to b"big"."""
    server = socket.create_server(("127.0.0.1", 0))

    def serve(conn: socket.socket) -> None:
        with conn, suppress(OSError):
            while data := conn.recv(65536):
                conn.sendall(b"x" * 4096 if data == b"big" else data)

    def accept() -> None:
        with suppress(OSError):
            while True:
                threading.Thread(target=serve, args=(server.accept()[0],), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    yield server.getsockname()
    server.close()


def connect(link: FaultyLink) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", link.port), 5)
    sock.settimeout(5)
    return sock


def read_until_closed(sock: socket.socket) -> bytes:
    received = b""
    with suppress(OSError):
        while chunk := sock.recv(65536):
            received += chunk
    return received


def test_a_link_passes_data_until_cut_and_again_after_restore(echo):
    with FaultyLink(*echo) as link, connect(link) as sock:
        sock.sendall(b"ping")
        assert sock.recv(100) == b"ping"
        link.cut()
        assert read_until_closed(sock) == b""  # the open connection is gone
        with connect(link) as refused:
            assert read_until_closed(refused) == b""  # and new ones are closed at once
        link.restore()
        with connect(link) as again:
            again.sendall(b"pong")
            assert again.recv(100) == b"pong"


def test_a_slow_link_holds_each_chunk_back(echo):
    with FaultyLink(*echo) as link, connect(link) as sock:
        link.slow(0.2)
        started = time.monotonic()
        sock.sendall(b"ping")
        assert sock.recv(100) == b"ping"
        assert time.monotonic() - started >= 0.4  # held once each way


def test_a_drop_cuts_a_reply_after_the_given_bytes_then_lets_new_connections_through(echo):
    with FaultyLink(*echo) as link:
        assert not link.drop_armed
        with connect(link) as sock:
            link.drop_mid_stream(after_bytes=1000)
            assert link.drop_armed
            sock.sendall(b"big")
            assert read_until_closed(sock) == b"x" * 1000
        assert link.drops == 1
        assert not link.drop_armed  # fired: the next drop may be armed
        with connect(link) as again:
            again.sendall(b"big")
            received = b""
            while len(received) < 4096:
                received += again.recv(65536)
            assert received == b"x" * 4096


def test_a_link_rewrites_service_urls_keeping_credentials():
    link = FaultyLink.to("postgresql+psycopg://user:secret@db.example:6543/app")
    try:
        assert link.target == ("db.example", 6543)
        assert link.url == f"postgresql+psycopg://user:secret@127.0.0.1:{link.port}/app"
        assert FaultyLink.to("redis://localhost/1").target == ("localhost", 6379)
    finally:
        link.close()


def test_a_kill_loop_kills_and_restarts_and_its_seed_replays_the_schedule(tmp_path):
    def run(group: ProcessGroup) -> list[str]:
        with KillLoop(group, seed=7, interval=(0.01, 0.02), max_kills=4) as loop:
            wait_for(lambda: loop.finished, 30, what="four kills")
        return [kill.name for kill in loop.kills]

    with ProcessGroup(tmp_path) as group:
        for name in ("a", "b", "c"):
            group.start(name, SLEEPER)
        first = {name: group[name].pid for name in group.names}
        victims = run(group)
        assert len(victims) == 4
        assert all(group[name].alive for name in group.names)  # restarted
        assert all(group[name].pid != first[name] for name in victims)
        assert run(group) == victims  # the same seed, the same schedule
    assert not any(group[name].alive for name in group.names)  # stopped with the group


def test_the_exactly_once_report_counts_missing_doubled_and_unexpected():
    report = check_exactly_once(["a", "b", "c", 4], ["a", "a", "a", "b", "4", "z"])
    assert (report.expected, report.applied) == (4, 6)
    assert report.missing == ("c",)
    assert report.doubled == {"a": 3}
    assert report.unexpected == ("z",)
    assert not report.exactly_once
    assert str(report).splitlines()[0] == (
        "4 expected, 6 effects applied (4 distinct): 1 missing, 1 doubled, 1 unexpected"
    )
    assert assert_exactly_once(["a", "b"], ["b", "a"]).exactly_once
    with pytest.raises(AssertionError, match="doubled: a x2"):
        assert_exactly_once(["a"], ["a", "a"])


def test_waiting_for_exactly_once_names_what_is_missing_when_time_runs_out():
    with pytest.raises(AssertionError, match=r"timed out after 0.1s: .*\n  missing: b"):
        wait_for_exactly_once(["a", "b"], lambda: ["a"], 0.1, interval=0.02)
    nudged: list[int] = []
    applied = wait_for_exactly_once(
        ["a"], lambda: ["a"] if nudged else [], 5, interval=0.01, nudge=lambda: nudged.append(1)
    )
    assert applied.exactly_once


def test_wait_for_fails_as_an_assertion_naming_what_it_waited_for():
    with pytest.raises(WaitTimeout, match="waiting for the moon") as failure:
        wait_for(lambda: False, 0.05, 0.01, what="the moon")
    assert isinstance(failure.value, AssertionError)
