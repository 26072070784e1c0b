"""A chaos kit: run your own tasks under kills and network faults, then check exactly once.

Everything here works without pytest; the fixtures are in
``celery_reliable.testing.plugin`` (``pytest_plugins = ["celery_reliable.testing.plugin"]``).
See the "Testing under failure" guide (docs/testing.md). celery_reliable's own chaos and
fault suites are built from these pieces.

- :class:`FaultyLink`: a TCP proxy to a real service that cuts, slows or drops mid-reply.
- :class:`KillableProcess`, :class:`ProcessGroup`, :class:`KillLoop`: real worker and
  relay processes, SIGKILLed by name or at random from a seed, and restarted.
- :func:`check_exactly_once`, :func:`assert_exactly_once`, :func:`wait_for_exactly_once`:
  every message id's effect applied once, with counts of missing, doubled and unexpected.
- :func:`wait_for`: poll a condition instead of sleeping.
- :func:`drop_store`: drop a test's tables (one table prefix per test, one database).
"""

from .effects import (
    ExactlyOnceReport,
    assert_exactly_once,
    check_exactly_once,
    column_values,
    wait_for_exactly_once,
)
from .faults import FaultyLink
from .processes import Kill, KillableProcess, KillLoop, ProcessGroup, celery_command
from .store import drop_store
from .waiting import WaitTimeout, wait_for

__all__ = [
    "ExactlyOnceReport",
    "FaultyLink",
    "Kill",
    "KillLoop",
    "KillableProcess",
    "ProcessGroup",
    "WaitTimeout",
    "assert_exactly_once",
    "celery_command",
    "check_exactly_once",
    "column_values",
    "drop_store",
    "wait_for",
    "wait_for_exactly_once",
]
