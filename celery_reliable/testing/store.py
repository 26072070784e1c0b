"""A store per test without a database per test.

Give each test its own ``reliable_table_prefix`` against a shared database, then drop what
it created with :func:`drop_store`.
"""

from __future__ import annotations

from sqlalchemy import create_engine, inspect, text


def drop_store(url: str, prefix: str) -> None:
    """Drop every table whose name starts with ``prefix``, and (PostgreSQL) its functions."""
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            quote = conn.dialect.identifier_preparer.quote
            for name in inspect(conn).get_table_names():
                if name.startswith(prefix):
                    conn.execute(text(f"DROP TABLE {quote(name)}"))
            if conn.dialect.name == "postgresql":  # the outbox trigger's functions
                functions = conn.execute(
                    text("SELECT proname FROM pg_proc WHERE starts_with(proname, :prefix)"),
                    {"prefix": prefix},
                ).scalars()
                for function in list(functions):
                    conn.execute(text(f"DROP FUNCTION IF EXISTS {quote(function)}()"))
    finally:
        engine.dispose()
