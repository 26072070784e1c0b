"""Waiting for a condition instead of sleeping: tests end as soon as the system is ready."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class WaitTimeout(AssertionError):
    """A condition did not hold in time. An AssertionError, so a test reports it as a failure."""


def wait_for(
    condition: Callable[[], T], timeout: float = 30.0, interval: float = 0.05, what: str = ""
) -> T:
    """Poll ``condition`` until it returns something truthy, and return that.

    Raises :class:`WaitTimeout` naming ``what`` after ``timeout`` seconds. The condition is
    tried once more after the deadline, so a slow poll never fails a condition that holds.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise WaitTimeout(f"timed out after {timeout}s waiting for {what or condition}")
        time.sleep(interval)
