# outbox.py: the outbox in Django's own transaction (PostgreSQL, Django on psycopg 3)
"""A SQLAlchemy Connection that is Django's database connection, for reliable.outbox.enqueue.

Django and SQLAlchemy each open their own connections, and a message must be written in
the transaction that writes the order. So SQLAlchemy is handed Django's connection (of
this thread, as Django keeps one per thread) and told to leave it alone: Django's
transaction.atomic() commits or rolls back both writes, and Django closes the connection.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from django.db import connections
from sqlalchemy import Connection, Engine, create_engine
from sqlalchemy.pool import SingletonThreadPool


class DjangoConnection:
    """Django's DBAPI connection as SQLAlchemy sees it: Django owns its transaction and life."""

    def __init__(self, alias: str) -> None:
        self.alias = alias

    def __getattr__(self, name: str) -> Any:
        django = connections[self.alias]
        django.ensure_connection()
        return getattr(django.connection, name)  # the current one: Django may reconnect

    def commit(self) -> None:
        """Django's transaction.atomic() commits."""

    def rollback(self) -> None:
        """Django's transaction.atomic() rolls back."""

    def close(self) -> None:
        """Django closes its connections."""


_engines: dict[str, Engine] = {}


@contextmanager
def outbox_connection(alias: str = "default") -> Iterator[Connection]:
    """A Connection on Django's ``alias`` connection, inside its transaction.atomic() block."""
    if not connections[alias].in_atomic_block:
        # Outside atomic(), Django commits each statement alone: the message would not
        # wait for the order's commit.
        raise RuntimeError("enqueue inside transaction.atomic()")
    if alias not in _engines:
        _engines[alias] = create_engine(
            "postgresql+psycopg://",  # the dialect of Django's driver (psycopg 3)
            creator=lambda: DjangoConnection(alias),
            use_native_hstore=False,  # its lookup wants psycopg's own Connection class
            poolclass=SingletonThreadPool,  # one per thread, as Django's connections
        )
    with _engines[alias].connect() as connection:
        yield connection
