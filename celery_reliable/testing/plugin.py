"""pytest fixtures for the chaos kit. Opt in from a conftest.py or test module::

    pytest_plugins = ["celery_reliable.testing.plugin"]

- ``chaos_seed``: the seed of this test's kill schedule. One seed per session (printed in
  the header; ``--reliable-chaos-seed N`` or ``RELIABLE_CHAOS_SEED=N`` replays a run),
  mixed with the test's id so each test gets its own schedule whatever else runs (and
  whichever pytest-xdist worker runs it: workers take the controller's seed).
- ``process_group``: a :class:`~celery_reliable.testing.ProcessGroup` logging to the
  test's ``tmp_path``; every process is stopped after the test.
- ``kill_loop``: makes :class:`~celery_reliable.testing.KillLoop` objects seeded with
  ``chaos_seed``; stopped after the test, their summary added to its report.
- ``fault_proxy``: makes :class:`~celery_reliable.testing.FaultyLink` proxies from URLs;
  closed after the test.

This module imports pytest; the rest of ``celery_reliable.testing`` does not.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from .faults import FaultyLink
from .processes import KillLoop, ProcessGroup

_SEED = pytest.StashKey[int]()
_WORKER_INPUT = "reliable_chaos_seed"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.getgroup("celery_reliable").addoption(
        "--reliable-chaos-seed",
        type=int,
        default=None,
        help="seed of the kill schedules (default: RELIABLE_CHAOS_SEED, else random)",
    )


def pytest_configure(config: pytest.Config) -> None:
    seed = config.getoption("--reliable-chaos-seed")
    if seed is None:
        from_env = os.environ.get("RELIABLE_CHAOS_SEED")
        # An xdist worker takes the controller's seed: the one in the header replays the run.
        from_controller = getattr(config, "workerinput", {}).get(_WORKER_INPUT)
        if from_controller is not None:
            seed = int(from_controller)
        else:
            seed = int(from_env) if from_env else random.randrange(1_000_000)
    config.stash[_SEED] = seed


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """pytest-xdist: hand the session's seed to each worker process."""
    node.workerinput[_WORKER_INPUT] = node.config.stash[_SEED]


def pytest_report_header(config: pytest.Config) -> str:
    return f"celery_reliable chaos seed: {config.stash[_SEED]} (--reliable-chaos-seed)"


@pytest.fixture
def chaos_seed(request: pytest.FixtureRequest) -> str:
    """The session's seed mixed with this test's id: replayable, and independent per test."""
    return f"{request.config.stash[_SEED]}:{request.node.nodeid}"


@pytest.fixture
def process_group(tmp_path: Path) -> Iterator[ProcessGroup]:
    """Named, killable processes with logs in ``tmp_path``; all stopped after the test."""
    with ProcessGroup(tmp_path) as group:
        yield group


KillLoopFactory = Callable[..., KillLoop]


@pytest.fixture
def kill_loop(request: pytest.FixtureRequest, chaos_seed: str) -> Iterator[KillLoopFactory]:
    """``kill_loop(group, interval=(0.3, 1.5), names=None, max_kills=None)`` -> a KillLoop.

    Seeded from ``chaos_seed`` (the n-th loop of a test gets its own stream). Use it as a
    context manager; any loop still running is stopped after the test.
    """
    loops: list[KillLoop] = []

    def make(
        group: ProcessGroup,
        *,
        interval: tuple[float, float] = (0.3, 1.5),
        names: Sequence[str] | None = None,
        max_kills: int | None = None,
        restart: bool = True,
    ) -> KillLoop:
        loop = KillLoop(
            group,
            seed=f"{chaos_seed}:{len(loops)}",
            interval=interval,
            names=names,
            max_kills=max_kills,
            restart=restart,
        )
        loops.append(loop)
        return loop

    yield make
    for loop in loops:
        loop.stop()
        request.node.add_report_section("teardown", "chaos", loop.summary())


@pytest.fixture
def fault_proxy() -> Iterator[Callable[[str], FaultyLink]]:
    """``fault_proxy(url)`` -> a FaultyLink to that service (``link.url`` points at it)."""
    links: list[FaultyLink] = []

    def make(url: str) -> FaultyLink:
        link = FaultyLink.to(url)
        links.append(link)
        return link

    yield make
    for link in links:
        link.close()
