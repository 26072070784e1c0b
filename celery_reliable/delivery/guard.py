"""The one rule for every I/O call on the delivery path, and the register of those calls.

A failure of our own infrastructure (the store, the breaker's shared storage, the broker a
retry or a deferral is published to, the result backend) is nobody's fault: it defers or
requeues the message, it never fails and acknowledges it. Each call site wraps its call in
:func:`guarded` under a name declared here with :func:`site`; the wrapper turns the
infrastructure's exceptions into :class:`InfrastructureFailure` (a ``StoreUnavailable``,
which the decision defers), and lets everything else through unchanged.

A ``DataError`` is not an outage: the store refused a value the message carried, and
asking again would be refused again. It passes through as it is, for the decision to
treat as the message's fault. Where the block also runs the body's own statements (the
commit of ``self.transaction()``), only a lost or refused connection counts as ours: an
``IntegrityError`` there is the body's.

``SITES`` is what ``tests/faults/test_fault_matrix.py`` checks its table against: a call
site added here without a row there fails that test.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache

from sqlalchemy.exc import DataError, DBAPIError, InterfaceError, OperationalError

from celery_reliable.exceptions import StoreUnavailable

#: Every guarded call site on the delivery path: name -> what it does.
SITES: dict[str, str] = {}


class InfrastructureFailure(StoreUnavailable):
    """Our own infrastructure failed at a named call site (never the message's fault)."""

    def __init__(self, site: str, cause: BaseException) -> None:
        super().__init__(f"{site}: {type(cause).__name__}: {cause}")
        self.site = site


def site(name: str, what: str) -> str:
    """Declare a guarded call site; returns ``name`` for the caller to keep."""
    SITES[name] = what
    return name


@cache
def infrastructure_errors() -> tuple[type[BaseException], ...]:
    """What the store, Redis and the brokers raise when they cannot be reached."""
    from kombu.exceptions import OperationalError as KombuOperationalError

    found: list[type[BaseException]] = [DBAPIError, OSError, KombuOperationalError]
    try:
        from redis.exceptions import RedisError

        found.append(RedisError)
    except ImportError:  # pragma: no cover - redis is optional
        pass
    return tuple(found)


def is_infrastructure_failure(exc: BaseException, *, with_body: bool = False) -> bool:
    """``exc`` says our infrastructure failed, not that a value was refused.

    ``with_body``: the statements were partly the body's, so of the database's errors
    only a lost or refused connection counts.
    """
    if not isinstance(exc, infrastructure_errors()) or isinstance(exc, DataError):
        return False
    if with_body and isinstance(exc, DBAPIError):
        return isinstance(exc, (OperationalError, InterfaceError)) or exc.connection_invalidated
    return True


@contextmanager
def guarded(name: str, *, with_body: bool = False) -> Iterator[None]:
    """Run the block as call site ``name``: an infrastructure failure becomes
    :class:`InfrastructureFailure`; anything else is raised as it is."""
    assert name in SITES, f"undeclared call site {name!r}"
    try:
        yield
    except InfrastructureFailure:
        raise
    except Exception as exc:
        if not is_infrastructure_failure(exc, with_body=with_body):
            raise
        raise InfrastructureFailure(name, exc) from exc
