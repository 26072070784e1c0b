"""Real worker and relay processes that a test can SIGKILL, alone or at random, and restart.

A crash test is only honest with real processes killed the hard way: no ``finally`` block,
no atexit hook and no broker goodbye runs. Each process here lives in its own process
group, so a kill takes the Celery main process and its pool children at once, as a lost
host or the OOM killer would. :class:`KillLoop` does that at random, from a seed, so a
failing run's kill schedule can be replayed exactly.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO


def celery_command(*args: str) -> list[str]:
    """``celery ARGS`` run by this interpreter (``celery_command("-A", "shop", "worker")``).

    A worker without ``-n``/``--hostname`` gets a node name of its own. Workers that share
    one (``celery@host``, the default) clash on RabbitMQ: each declares its remote-control
    queue exclusive, so a second one, or one started while the last is still closing its
    connection, dies with RESOURCE_LOCKED.
    """
    named = any(a == "-n" or a.startswith(("-n", "--hostname")) for a in args)
    if "worker" in args and not named:
        args = (*args, f"--hostname={uuid.uuid4().hex[:12]}@%h")
    return [sys.executable, "-m", "celery", *args]


class KillableProcess:
    """A command in its own process group, with its output appended to ``log``.

    ``env`` adds to (or overrides) this process's environment. ``proc`` is the underlying
    :class:`subprocess.Popen`.
    """

    def __init__(
        self,
        command: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | Path | None = None,
        log: Path | None = None,
    ) -> None:
        self.command = list(command)
        self.log = log
        self._file: IO[bytes] | None = log.open("ab") if log is not None else None
        self.proc = subprocess.Popen(
            self.command,
            cwd=cwd,
            env={**os.environ, **(env or {})},
            stdin=subprocess.DEVNULL,
            stdout=self._file if self._file is not None else subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def output(self) -> str:
        """Everything logged so far (by every run that shared this log)."""
        return self.log.read_text(errors="replace") if self.log is not None else ""

    def kill(self) -> None:
        """SIGKILL the whole process group: nothing gets to clean up."""
        if self.proc.poll() is None:
            with suppress(ProcessLookupError):  # it exited between the poll and the kill
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        self._close_log()

    def stop(self, timeout: float = 30.0) -> None:
        """Warm shutdown (SIGTERM to the group); SIGKILL after ``timeout`` seconds.

        Like a supervisor that signals the whole group (systemd's default): a Celery worker
        finishes the tasks it runs, a relay finishes its batch.
        """
        if self.proc.poll() is None:
            with suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._close_log()

    def _close_log(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


@dataclass(frozen=True)
class _Spec:
    command: list[str]
    env: dict[str, str]


class ProcessGroup:
    """Named processes that can be killed and started again with the same command.

    Logs go to ``directory/<name>.log`` (appended across restarts) when a directory is
    given. ``env`` and ``cwd`` apply to every process; :meth:`start` adds per-process
    variables. Use it as a context manager, or call :meth:`stop_all`.
    """

    def __init__(
        self,
        directory: Path | None = None,
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | Path | None = None,
    ) -> None:
        self.directory = directory
        self.env = dict(env or {})
        self.cwd = cwd
        self._specs: dict[str, _Spec] = {}
        self._processes: dict[str, KillableProcess] = {}
        self._lock = threading.Lock()

    @property
    def names(self) -> list[str]:
        return list(self._specs)

    def __getitem__(self, name: str) -> KillableProcess:
        return self._processes[name]

    def start(
        self, name: str, command: Sequence[str], *, env: Mapping[str, str] | None = None
    ) -> KillableProcess:
        """Start ``command`` as ``name`` (stopping a running process of that name first)."""
        with self._lock:
            self._specs[name] = _Spec(list(command), {**self.env, **(env or {})})
            previous = self._processes.pop(name, None)
        if previous is not None:
            previous.stop()
        return self.restart(name)

    def restart(self, name: str) -> KillableProcess:
        """Start ``name`` again with its command; a running one is killed first."""
        with self._lock:
            spec = self._specs[name]
            previous = self._processes.get(name)
        if previous is not None:
            previous.kill()
        log = self.directory / f"{name}.log" if self.directory is not None else None
        process = KillableProcess(spec.command, env=spec.env, cwd=self.cwd, log=log)
        with self._lock:
            self._processes[name] = process
        return process

    def kill(self, name: str) -> None:
        """SIGKILL ``name``'s process group (it stays down until restarted)."""
        self._processes[name].kill()

    def stop_all(self) -> None:
        """Warm shutdown of every process, escalating to SIGKILL."""
        with self._lock:
            processes = list(self._processes.values())
        for process in processes:
            process.stop()

    def __enter__(self) -> ProcessGroup:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop_all()


@dataclass(frozen=True)
class Kill:
    """One kill of a :class:`KillLoop`: which process, and when (seconds into the loop)."""

    name: str
    at: float


class KillLoop:
    """SIGKILL a random process of ``group`` every ``interval`` seconds and start it again.

    The victims and the pauses come from ``random.Random(seed)``: a run's schedule is
    replayed by giving its seed again (the time each process takes to die and start
    varies, the order and pauses do not). ``names`` limits the victims (default: every
    process of the group); the loop ends by itself after ``max_kills``. ``restart=False``
    leaves victims down. Runs in a background thread between :meth:`start` and
    :meth:`stop` (or as a context manager); an error in the loop is raised by stop().
    """

    def __init__(
        self,
        group: ProcessGroup,
        *,
        seed: int | str | None = None,
        interval: tuple[float, float] = (0.3, 1.5),
        names: Sequence[str] | None = None,
        max_kills: int | None = None,
        restart: bool = True,
    ) -> None:
        low, high = interval
        if not 0 < low <= high:
            raise ValueError(f"interval must be (low, high) with 0 < low <= high, got {interval}")
        self.group = group
        self.seed = random.randrange(1_000_000) if seed is None else seed
        self.interval = (low, high)
        self.names = list(names) if names is not None else None
        self.max_kills = max_kills
        self.restart = restart
        self.kills: list[Kill] = []
        self._random = random.Random(self.seed)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    @property
    def finished(self) -> bool:
        """The loop ended by itself (max_kills reached or an error); stop() still needed."""
        return self._thread is not None and not self._thread.is_alive()

    def start(self) -> KillLoop:
        if self._thread is not None:
            raise RuntimeError("a KillLoop runs once")
        self._thread = threading.Thread(target=self._run, name="kill-loop", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """End the loop after the kill in progress; raise what went wrong inside, if anything."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._error is not None:
            error, self._error = self._error, None
            raise RuntimeError(f"the kill loop failed after {len(self.kills)} kills") from error

    def summary(self) -> str:
        """One line for a test report: seed and kills by process."""
        counts: dict[str, int] = {}
        for kill in self.kills:
            counts[kill.name] = counts.get(kill.name, 0) + 1
        by_name = ", ".join(f"{name} x{n}" for name, n in sorted(counts.items())) or "none"
        return f"kill loop seed {self.seed!r}: {len(self.kills)} kills ({by_name})"

    def __enter__(self) -> KillLoop:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _run(self) -> None:
        started = time.monotonic()
        try:
            while self.max_kills is None or len(self.kills) < self.max_kills:
                if self._stop.wait(self._random.uniform(*self.interval)):
                    return
                victim = self._random.choice(self.names or self.group.names)
                self.group.kill(victim)
                self.kills.append(Kill(victim, time.monotonic() - started))
                if self.restart:
                    self.group.restart(victim)
        except BaseException as exc:  # handed to the test thread by stop()
            self._error = exc
