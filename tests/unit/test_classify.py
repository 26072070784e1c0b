"""Exception classification: built-in transient errors and declared precedence."""

from __future__ import annotations

import pymysql
import pytest
import redis.exceptions
from kombu.exceptions import OperationalError as KombuOperationalError
from psycopg import errors as pg_errors
from sqlalchemy.exc import DBAPIError, OperationalError

from celery_reliable import ConfigurationError
from celery_reliable.classify import Classifier, Kind, is_builtin_transient, resolve


class PaymentDeclined(Exception):
    pass


def wrapped(orig: BaseException) -> DBAPIError:
    """What SQLAlchemy raises around a driver error."""
    return OperationalError("SELECT 1", {}, orig)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "exc",
    [
        ConnectionResetError(),
        TimeoutError(),
        redis.exceptions.ConnectionError("gone"),
        redis.exceptions.TimeoutError(),
        KombuOperationalError("broker down"),
        wrapped(pg_errors.SerializationFailure()),  # 40001
        wrapped(pg_errors.DeadlockDetected()),  # 40P01
        wrapped(pg_errors.AdminShutdown()),  # 57P01
        wrapped(pg_errors.TooManyConnections()),  # 53300
        wrapped(pg_errors.ConnectionFailure()),  # 08006
        wrapped(pymysql.err.OperationalError(1213, "Deadlock found")),
        wrapped(pymysql.err.OperationalError(1205, "Lock wait timeout exceeded")),
        wrapped(pymysql.err.OperationalError(2013, "Lost connection")),
    ],
    ids=repr,
)
def test_builtin_transient_errors(exc):
    assert is_builtin_transient(exc)


@pytest.mark.parametrize(
    "exc",
    [
        ValueError("bad amount"),
        KeyError("x"),
        wrapped(pg_errors.UniqueViolation()),  # 23505: retrying won't help
        wrapped(pg_errors.UndefinedTable()),
        wrapped(pymysql.err.OperationalError(1054, "Unknown column")),
    ],
    ids=repr,
)
def test_other_errors_are_not_transient(exc):
    assert not is_builtin_transient(exc)


def test_a_transient_cause_makes_the_wrapper_transient():
    def call_gateway():
        try:
            raise ConnectionRefusedError()
        except ConnectionRefusedError as inner:
            raise RuntimeError("payment gateway call failed") from inner

    with pytest.raises(RuntimeError) as raised:
        call_gateway()
    assert is_builtin_transient(raised.value)


def test_declarations_win_in_order_task_poison_task_transient_global():
    classifier = Classifier(transient=[PaymentDeclined], poison=["builtins.KeyError"])
    assert classifier.classify(PaymentDeclined()) is Kind.TRANSIENT
    assert classifier.classify(KeyError()) is Kind.POISON
    assert classifier.classify(ValueError()) is Kind.UNCLASSIFIED
    assert classifier.classify(TimeoutError()) is Kind.TRANSIENT
    # The task's own declarations beat the global ones, and even the built-ins.
    assert classifier.classify(PaymentDeclined(), task_poison=(PaymentDeclined,)) is Kind.POISON
    assert classifier.classify(KeyError(), task_transient=(KeyError,)) is Kind.TRANSIENT
    assert classifier.classify(TimeoutError(), task_poison=(TimeoutError,)) is Kind.POISON


def test_bad_declarations_are_refused_naming_them():
    with pytest.raises(ConfigurationError, match="cannot be imported"):
        resolve(["no.such.module.Error"], "x")
    with pytest.raises(ConfigurationError, match="not an exception class"):
        resolve(["os.path"], "x")
    with pytest.raises(ConfigurationError, match="neither an exception class"):
        resolve([42], "task 't': poison_exceptions")  # type: ignore[list-item]
    with pytest.raises(ConfigurationError, match="must be a tuple"):
        resolve(ValueError, "x")  # type: ignore[arg-type]
