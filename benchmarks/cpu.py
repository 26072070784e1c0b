"""CPU per message of each kind of process around a drain, from /proc/<pid>/stat.

A regression shows up first as CPU moving between processes: the worker's main process
(plain Celery's bottleneck on Redis), its pool processes (where the inbox's statements
run), the database backends serving them, and the broker. Each is read at the drain's
start (t0) and end (t1) as utime + stime, in clock ticks (10 ms), and divided by the
messages drained in between.

The backends are this run's own (``application_name`` = the run's prefix, set in the
worker's store URL); ``db aux`` are PostgreSQL's WAL writer, background writer and
checkpointer, and ``broker`` the broker's server processes. Those two serve the whole
machine, so other work inflates them: compare them only between variants of one run.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from sqlalchemy import Engine, text

CLASSES = ("main", "children", "db backends", "db aux", "broker")
BROKER_PROCESSES = {"redis": ("redis-server",), "rabbitmq": ("beam.smp",)}
_TICK = os.sysconf("SC_CLK_TCK")
_AUX = ("walwriter", "background writer", "checkpointer")

#: {class: {pid: clock ticks used so far}}
Snapshot = dict[str, dict[int, int]]


def ticks(pid: int) -> int | None:
    """utime + stime of ``pid`` in clock ticks, or None when it is gone or unreadable."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # the command name may hold spaces
    return int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5)


def children(pid: int) -> list[int]:
    """The direct children of ``pid`` (the prefork pool's processes)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            found += [int(child) for child in task.read_text().split()]
        except OSError:
            continue
    return found


def named(names: Iterable[str]) -> list[int]:
    """Processes whose command name is one of ``names``."""
    wanted, found = set(names), []
    for comm in Path("/proc").glob("[0-9]*/comm"):
        try:
            if comm.read_text().strip() in wanted:
                found.append(int(comm.parent.name))
        except OSError:
            continue
    return found


def postgres_pids(engine: Engine, application_name: str) -> tuple[list[int], list[int]]:
    """This run's backends and PostgreSQL's shared writers; nothing for other databases."""
    if engine.dialect.name != "postgresql":
        return [], []
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT pid, backend_type, application_name FROM pg_stat_activity")
        )
        ours, aux = [], []
        for pid, backend_type, name in rows:
            if name == application_name:
                ours.append(pid)
            elif backend_type in _AUX:
                aux.append(pid)
    return ours, aux


def snapshot(worker: int, broker: str, backends: tuple[list[int], list[int]]) -> Snapshot:
    """The CPU used so far by every process of each class (``backends``: ours, aux)."""
    ours, aux = backends
    pids = {
        "main": [worker],
        "children": children(worker),
        "db backends": ours,
        "db aux": aux,
        "broker": named(BROKER_PROCESSES[broker]),
    }
    return {
        kind: {pid: used for pid in members if (used := ticks(pid)) is not None}
        for kind, members in pids.items()
    }


def per_message(before: Snapshot, after: Snapshot, messages: int) -> dict[str, float]:
    """Microseconds of CPU per message for each class between two snapshots.

    A process that appeared in between (a backend connected after t0) counts from zero.
    """
    used: dict[str, float] = {}
    for kind in CLASSES:
        start: Mapping[int, int] = before.get(kind, {})
        delta = sum(now - start.get(pid, 0) for pid, now in after.get(kind, {}).items())
        used[kind] = delta / _TICK / messages * 1e6
    used["total"] = sum(used[kind] for kind in CLASSES)
    return used
