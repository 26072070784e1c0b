"""Retry policies: how many runs a failing message gets, and how long it waits between them.

A policy only computes; the delivery pipeline (``celery_reliable.delivery``) decides when to use it
and where the wait happens (on the broker for short delays, in the store for long ones).
``max_retries`` counts retries, not runs: ``max_retries=2`` allows three runs in all, and
the run number is the attempt count the inbox keeps in the store (so it survives Redis
redeliveries and worker crashes, unlike Celery's ``retries`` header).
"""

from __future__ import annotations

import random
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass
from datetime import timedelta

from .durations import parse_seconds
from .exceptions import ConfigurationError

#: The name of the policy used by tasks that name none.
DEFAULT = "default"


def _seconds(value: float | timedelta, what: str) -> float:
    """A delay in seconds; 0 is allowed (retry at once), negative or nonsense is not."""
    try:
        return parse_seconds(value, allow_zero=True)
    except ValueError as exc:
        raise ConfigurationError(f"RetryPolicy {what}: {exc}") from exc


@dataclass(frozen=True)
class RetryPolicy:
    """At most ``max_retries`` retries, each after :meth:`delay` for the run that failed."""

    max_retries: int
    base_delay: float  # seconds
    max_delay: float  # seconds
    backoff: str  # "fixed" or "exponential"
    jitter: bool

    def __post_init__(self) -> None:
        if (
            isinstance(self.max_retries, bool)
            or not isinstance(self.max_retries, int)
            or self.max_retries < 0
        ):
            raise ConfigurationError(
                f"RetryPolicy max_retries must be a whole number >= 0, got {self.max_retries!r}"
            )
        if self.max_delay < self.base_delay:
            raise ConfigurationError(
                f"RetryPolicy max_delay ({self.max_delay:g}s) is below base_delay "
                f"({self.base_delay:g}s)"
            )

    @classmethod
    def fixed(cls, max_retries: int, delay: float | timedelta) -> RetryPolicy:
        """The same wait before every retry (seconds, a timedelta or '30s')."""
        seconds = _seconds(delay, "delay")
        return cls(max_retries, seconds, seconds, backoff="fixed", jitter=False)

    @classmethod
    def exponential(
        cls,
        max_retries: int,
        base_delay: float | timedelta,
        max_delay: float | timedelta,
        jitter: bool = True,
    ) -> RetryPolicy:
        """base, 2*base, 4*base, ... capped at ``max_delay``.

        With ``jitter`` each wait is drawn uniformly from [wait/2, wait] ("equal jitter"):
        retries of a batch that failed together spread out instead of returning together,
        and no wait drops below half its step, so a retry never comes back at once.
        """
        return cls(
            max_retries,
            _seconds(base_delay, "base_delay"),
            _seconds(max_delay, "max_delay"),
            backoff="exponential",
            jitter=bool(jitter),
        )

    def delay(self, run: int) -> float:
        """Seconds to wait before the run after run number ``run`` (1 = the first run)."""
        step = self.base_delay
        if self.backoff == "exponential":
            step = min(self.max_delay, self.base_delay * 2.0 ** min(max(run - 1, 0), 64))
        if self.jitter:
            step = random.uniform(step / 2, step)
        return step

    def allows_retry_after(self, run: int) -> bool:
        """May a message whose run number ``run`` failed be run again?"""
        return run <= self.max_retries


#: Used by a task that names no policy, unless ``reliable.retry_policies["default"]`` is set.
BUILT_IN_DEFAULT = RetryPolicy.exponential(max_retries=3, base_delay=1, max_delay=60)


class RetryPolicies(MutableMapping[str, RetryPolicy]):
    """``reliable.retry_policies``: named policies, validated when they are set."""

    def __init__(self) -> None:
        self._policies: dict[str, RetryPolicy] = {DEFAULT: BUILT_IN_DEFAULT}

    def __getitem__(self, name: str) -> RetryPolicy:
        try:
            return self._policies[name]
        except KeyError:
            known = ", ".join(sorted(self._policies))
            raise ConfigurationError(
                f"no retry policy named {name!r}; known: {known}. Register it with "
                f"reliable.retry_policies[{name!r}] = RetryPolicy.exponential(...)"
            ) from None

    def __setitem__(self, name: str, policy: RetryPolicy) -> None:
        if not isinstance(name, str) or not name.strip():
            raise ConfigurationError(f"a retry policy name must be a non-empty string: {name!r}")
        if not isinstance(policy, RetryPolicy):
            raise ConfigurationError(
                f"retry policy {name!r} must be a RetryPolicy (RetryPolicy.fixed(...) or "
                f"RetryPolicy.exponential(...)), got {policy!r}"
            )
        self._policies[name] = policy

    def __delitem__(self, name: str) -> None:
        if name == DEFAULT:
            self._policies[DEFAULT] = BUILT_IN_DEFAULT  # there is always a default
        else:
            del self._policies[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._policies)

    def __len__(self) -> int:
        return len(self._policies)

    def resolve(self, policy: str | RetryPolicy | None) -> RetryPolicy:
        """A task's ``retry_policy`` option: a name, a policy, or None for the default."""
        if policy is None:
            return self._policies[DEFAULT]
        if isinstance(policy, RetryPolicy):
            return policy
        if isinstance(policy, str):
            return self[policy]
        raise ConfigurationError(
            f"retry_policy must be a policy name or a RetryPolicy, got {policy!r}"
        )
