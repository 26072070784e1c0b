"""Retrying a dependency that went away: backoff, and one log line per change of state.

The relay is a loop that must outlive every outage of what it talks to (the store, the
broker, the lock store, its LISTEN connection). Each failed try logs a WARNING with its
cause and how long the loop waits before the next; the first success after failures logs
an INFO, so an operator reading the log sees when an outage began, why, and when it ended.
"""

from __future__ import annotations

import logging
import time

#: Longest wait between two tries, in seconds.
CEILING = 30.0


class Outage:
    """The state of one dependency: how many tries in a row failed, and when to try again."""

    def __init__(self, what: str, logger: logging.Logger) -> None:
        self.what = what
        self.failures = 0
        self._logger = logger
        self._retry_at = 0.0

    def failed(self, exc: BaseException, then: str = "retrying") -> float:
        """Record a failed try; return the seconds to wait before the next (1, 2, 4 ... 30)."""
        self.failures += 1
        delay = min(CEILING, 0.5 * 2.0**self.failures)
        self._retry_at = time.monotonic() + delay
        self._logger.warning(
            "%s failed (%s: %s); %s in %.0fs (failure %d in a row)",
            self.what,
            type(exc).__name__,
            str(exc).strip(),
            then,
            delay,
            self.failures,
        )
        return delay

    def recovered(self) -> None:
        """Record a successful try; logs the end of the outage, if there was one."""
        if self.failures:
            self._logger.info("%s works again after %d failures", self.what, self.failures)
            self.failures = 0

    def due(self) -> bool:
        """Whether the backoff after the last failure has passed."""
        return time.monotonic() >= self._retry_at

    def remaining(self) -> float:
        """Seconds until the next try is due (0 when due)."""
        return max(0.0, self._retry_at - time.monotonic())
