"""A ReliableTask's options, resolved once into one immutable value.

The task's class attributes (``handler_key``, ``retry_policy``, ``transient_exceptions``,
...) are what a user writes; :class:`TaskOptions` is what the pipeline reads. Resolving
them imports dotted exception paths, looks up named retry policies and validates handler
keys: work and errors that belong to start-up (``Reliable.check()`` resolves every task
before the worker consumes), not to each delivery.
"""

from __future__ import annotations

from collections.abc import Container, Iterable
from dataclasses import dataclass
from typing import Any

from celery_reliable.classify import resolve
from celery_reliable.exceptions import ConfigurationError
from celery_reliable.poison import PoisonDetector, TimespanDetector
from celery_reliable.retry import RetryPolicies, RetryPolicy
from celery_reliable.store.tables import KEY_LENGTH


@dataclass(frozen=True)
class TaskOptions:
    """What the delivery pipeline needs to know about one task, resolved and validated."""

    task_name: str
    #: The inbox identity first, then the legacy keys that still count as already done.
    handler_keys: tuple[str, ...]
    transient: tuple[type[BaseException], ...]
    poison: tuple[type[BaseException], ...]
    #: The detectors the task's own options ask for (``max_age``, ``max_processing_time``).
    detectors: tuple[PoisonDetector, ...]
    retry_policy: RetryPolicy
    #: The task named its ``retry_policy``: unclassified exceptions are retried under it.
    explicit_policy: bool
    circuit_breaker: str | None
    #: ``max_age`` is set: detectors need the message's first-seen time from the store.
    needs_first_seen: bool

    @property
    def handler_key(self) -> str:
        return self.handler_keys[0]

    @property
    def legacy_keys(self) -> tuple[str, ...]:
        return self.handler_keys[1:]


def resolve_options(
    task: Any, *, retry_policies: RetryPolicies, breakers: Container[str]
) -> TaskOptions:
    """Resolve ``task``'s options; ConfigurationError naming the task when one is invalid."""
    keys = handler_keys_of(task)
    policy = retry_policies.resolve(task.retry_policy)
    transient = resolve(task.transient_exceptions, f"task {task.name!r}: transient_exceptions")
    poison = resolve(task.poison_exceptions, f"task {task.name!r}: poison_exceptions")
    detectors: tuple[PoisonDetector, ...] = ()
    if task.max_age is not None or task.max_processing_time is not None:
        try:
            detectors = (TimespanDetector(task.max_age, task.max_processing_time),)
        except ConfigurationError as exc:
            raise ConfigurationError(f"task {task.name!r}: {exc}") from None
    breaker = task.circuit_breaker
    if breaker is not None and breaker not in breakers:
        raise ConfigurationError(
            f"task {task.name!r}: circuit breaker {breaker!r} is not "
            f"configured; call reliable.breakers.configure({breaker!r}, ...)"
        )
    return TaskOptions(
        task_name=task.name,
        handler_keys=keys,
        transient=transient,
        poison=poison,
        detectors=detectors,
        retry_policy=policy,
        explicit_policy=task.retry_policy is not None,
        circuit_breaker=breaker,
        needs_first_seen=task.max_age is not None,
    )


def handler_keys_of(task: Any) -> tuple[str, ...]:
    """The task's handler key followed by its legacy keys, validated."""
    key = task.handler_key if task.handler_key is not None else task.name
    legacy = task.legacy_handler_keys
    if isinstance(legacy, str) or not isinstance(legacy, (tuple, list)):
        raise ConfigurationError(
            f"task {task.name!r}: legacy_handler_keys must be a tuple of strings, got {legacy!r}"
        )
    keys = (key, *legacy)
    for value in keys:
        if not isinstance(value, str) or not value.strip() or len(value) > KEY_LENGTH:
            raise ConfigurationError(
                f"task {task.name!r}: handler key {value!r} must be a non-empty string of at "
                f"most {KEY_LENGTH} characters"
            )
    if len(set(keys)) != len(keys):
        raise ConfigurationError(f"task {task.name!r}: handler keys repeat: {keys!r}")
    return keys


def check_unique_keys(options: Iterable[TaskOptions]) -> None:
    """Refuse two tasks that claim one handler key: they would take each other's messages
    as already done."""
    owners: dict[str, str] = {}
    for task in options:
        for key in task.handler_keys:
            other = owners.setdefault(key, task.task_name)
            if other != task.task_name:
                raise ConfigurationError(
                    f"handler key {key!r} is claimed by both {other!r} and {task.task_name!r}; "
                    "give each task its own handler_key"
                )
