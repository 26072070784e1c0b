"""Exception classification: is a failure worth retrying, hopeless, or unknown?

- **transient**: the world was briefly wrong (a dropped connection, a timeout, a deadlock or
  serialization failure the database asks us to retry). Retried up to
  ``reliable_max_attempts`` runs, whatever the task's retry budget.
- **poison**: the message itself is wrong and no retry can help. Dead-lettered at once.
- **unclassified**: everything else follows the task's retry policy, then
  ``MaxRetriesExceeded``.

The most specific declaration wins: the task's own poison, then the task's own transient
exceptions, then the global settings, then the built-in defaults: transient for connection
errors and a soft time limit (the run ran out of time, the next one may not), poison for
a database ``DataError`` (the store refused a value the message carries: asking again is
refused again). The built-ins
look through the exception's cause chain and into SQLAlchemy's wrapped driver error, where
PostgreSQL's SQLSTATE and MySQL's error number say what really happened.
"""

from __future__ import annotations

import enum
import importlib
from collections.abc import Iterable, Iterator
from functools import cache

from sqlalchemy.exc import DataError

from .exceptions import ConfigurationError

#: PostgreSQL SQLSTATEs worth retrying: connection exceptions (08), insufficient resources
#: (53), operator intervention such as admin shutdown (57P), serialization failure and
#: deadlock (40001, 40P01).
PG_TRANSIENT_CLASSES = ("08", "53", "57P")
PG_TRANSIENT_CODES = frozenset({"40001", "40P01"})
#: MySQL/MariaDB error numbers worth retrying: deadlock, lock wait timeout, too many
#: connections, and the client's "can't connect" / "server has gone away" / "lost connection".
MYSQL_TRANSIENT_CODES = frozenset({1213, 1205, 1040, 2002, 2003, 2006, 2013})
#: SQLite's "database is locked" is a busy writer, not a broken database.
SQLITE_TRANSIENT_MESSAGES = ("database is locked", "database is busy")


class Kind(enum.Enum):
    TRANSIENT = "transient"
    POISON = "poison"
    UNCLASSIFIED = "unclassified"


ExceptionSpec = type[BaseException] | str


@cache
def _import(path: str) -> type[BaseException]:
    module_name, _, name = path.rpartition(".")
    try:
        found = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ConfigurationError(f"exception {path!r} cannot be imported: {exc}") from exc
    if not (isinstance(found, type) and issubclass(found, BaseException)):
        raise ConfigurationError(f"{path!r} is not an exception class")
    return found


def resolve(specs: Iterable[ExceptionSpec], what: str) -> tuple[type[BaseException], ...]:
    """Exception classes from classes or dotted paths; ConfigurationError on anything else."""
    if isinstance(specs, (str, type)):
        raise ConfigurationError(f"{what} must be a tuple of exception classes, got {specs!r}")
    resolved = []
    for spec in specs:
        if isinstance(spec, str):
            resolved.append(_import(spec))
        elif isinstance(spec, type) and issubclass(spec, BaseException):
            resolved.append(spec)
        else:
            raise ConfigurationError(
                f"{what}: {spec!r} is neither an exception class nor a dotted path"
            )
    return tuple(resolved)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """The exception, what it wraps (SQLAlchemy's ``orig``) and its causes, each once."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        current = todo.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        for linked in (
            getattr(current, "orig", None),
            current.__cause__,
            current.__context__,
        ):
            if isinstance(linked, BaseException):
                todo.append(linked)


@cache
def _library_transients() -> tuple[type[BaseException], ...]:
    """Connection errors of the broker and cache clients that are installed."""
    from celery.exceptions import SoftTimeLimitExceeded

    found: list[type[BaseException]] = [ConnectionError, TimeoutError, SoftTimeLimitExceeded]
    from kombu.exceptions import OperationalError as KombuOperationalError

    found.append(KombuOperationalError)
    try:
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeoutError

        found += [RedisConnectionError, RedisTimeoutError]
    except ImportError:  # pragma: no cover - redis is optional
        pass
    try:
        from amqp.exceptions import RecoverableConnectionError  # type: ignore[import-untyped]

        found.append(RecoverableConnectionError)
    except ImportError:  # pragma: no cover - amqp is optional
        pass
    return tuple(found)


def _driver_says_transient(exc: BaseException) -> bool:
    sqlstate = getattr(exc, "sqlstate", None) or getattr(exc, "pgcode", None)
    if isinstance(sqlstate, str):
        return sqlstate in PG_TRANSIENT_CODES or sqlstate.startswith(PG_TRANSIENT_CLASSES)
    module = type(exc).__module__
    if module.startswith("pymysql") or module.startswith("MySQLdb"):
        code = exc.args[0] if exc.args else None
        return isinstance(code, int) and code in MYSQL_TRANSIENT_CODES
    if module == "sqlite3":
        return any(text in str(exc) for text in SQLITE_TRANSIENT_MESSAGES)
    return False


def is_builtin_transient(exc: BaseException) -> bool:
    """Connection errors, timeouts, and database errors that ask to be retried."""
    transients = _library_transients()
    for link in _chain(exc):
        if isinstance(link, transients) or _driver_says_transient(link):
            return True
        if getattr(link, "connection_invalidated", False):  # SQLAlchemy: the connection died
            return True
    return False


class Classifier:
    """Classifies a task's exception against the task's and the global declarations."""

    def __init__(self, transient: Iterable[ExceptionSpec], poison: Iterable[ExceptionSpec]) -> None:
        self.transient = resolve(transient, "reliable_transient_exceptions")
        self.poison = resolve(poison, "reliable_poison_exceptions")

    def classify(
        self,
        exc: BaseException,
        *,
        task_transient: tuple[type[BaseException], ...] = (),
        task_poison: tuple[type[BaseException], ...] = (),
    ) -> Kind:
        for declared, kind in (
            (task_poison, Kind.POISON),
            (task_transient, Kind.TRANSIENT),
            (self.poison, Kind.POISON),
            (self.transient, Kind.TRANSIENT),
        ):
            if declared and isinstance(exc, declared):
                return kind
        if is_builtin_transient(exc):
            return Kind.TRANSIENT
        return Kind.POISON if isinstance(exc, DataError) else Kind.UNCLASSIFIED
