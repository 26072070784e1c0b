"""The schema built by the shipped migrations is exactly the declared one, on every database."""

import logging

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import column, insert, inspect, table

from celery_reliable import ConfigurationError, Reliable
from celery_reliable.store import migrate
from tests.support import make_app


def test_migrated_schema_equals_declared_tables(db_url, table_prefix):
    ext = Reliable.of(make_app("memory://", db_url, table_prefix))
    assert migrate.current(ext.database, ext.tables) is None
    ext.create_schema()
    ours = {t.name for t in ext.tables.metadata.sorted_tables}

    def include_name(name, type_, parent_names):
        return type_ != "table" or name in ours

    with ext.database.engine.connect() as conn:
        context = MigrationContext.configure(
            conn, opts={"compare_type": True, "include_name": include_name}
        )
        assert compare_metadata(context, ext.tables.metadata) == []
        assert ours <= set(inspect(conn).get_table_names())
    assert migrate.current(ext.database, ext.tables) == migrate.head(ext.database, ext.tables)
    ext.database.dispose()


def test_upgrade_is_idempotent_and_prefixes_keep_stores_apart(db_url, table_prefix):
    first = Reliable.of(make_app("memory://", db_url, table_prefix))
    first.create_schema()
    first.create_schema()
    other_prefix = table_prefix + "b_"
    second = Reliable.of(make_app("memory://", db_url, other_prefix))
    assert migrate.current(second.database, second.tables) is None
    second.create_schema()
    with first.database.engine.connect() as conn:
        names = set(inspect(conn).get_table_names())
    assert {f"{table_prefix}inbox_status", f"{other_prefix}inbox_status"} <= names
    for ext in (first, second):
        ext.database.dispose()


def _stamp(ext: Reliable, revision: str) -> None:
    """Set the store's recorded revision, as another release's `db upgrade` would leave it."""
    with ext.database.engine.begin() as conn:
        version = table(ext.tables.version_table, column("version_num"))
        conn.execute(version.update().values(version_num=revision))


def test_a_store_behind_is_refused_but_one_ahead_is_accepted(db_url, table_prefix, caplog):
    ext = Reliable.of(make_app("memory://", db_url, table_prefix))
    ext.create_schema()
    ext.check_schema()  # at head: fine

    _stamp(ext, "0001")  # an older store: this worker would defer everything
    with pytest.raises(ConfigurationError, match=r"schema revision 0001.*reliable db upgrade"):
        ext.check_schema()

    # A newer release migrated first (rolling deployment): this older worker still starts.
    _stamp(ext, "9999_from_a_newer_release")
    with caplog.at_level(logging.WARNING, logger="celery_reliable.extension"):
        ext.check_schema()
    assert "newer than this version's" in caplog.text
    ext.database.dispose()


def test_rows_enqueued_before_the_wire_columns_are_relayed_after_upgrading(db_url, table_prefix):
    app = make_app("memory://", db_url, table_prefix)
    app.task(name="old.ship", shared=False)(_ship)
    ext = Reliable.of(app)
    migrate.upgrade(ext.database, ext.tables, "0005")  # before the wire columns
    row = ext.outbox.build_row(app.signature("old.ship"), "old-1", None, None, None, {})
    written_then = {k: v for k, v in row.items() if k not in ("wire_format", "wire")}
    with ext.database.engine.begin() as conn:
        conn.execute(insert(ext.tables.outbox).values(written_then))
    ext.create_schema()
    assert ext.relay.drain() == 1  # through kombu, from the row's columns
    with app.connection_for_write() as conn:
        message = conn.SimpleQueue(f"q_{table_prefix}").get(timeout=5)
        assert message.headers["reliable_message_id"] == "old-1"
        assert message.headers["id"] == row["task_id"]
    ext.relay.close()
    ext.database.dispose()


def _ship() -> None:
    """Enqueued, never run here."""


def test_a_worker_started_from_code_gets_the_configuration_error(db_url, table_prefix):
    """`celery worker` refuses an unmigrated store with one line (tests/acceptance/test_cli.py);
    a worker built in code (as ``start_worker`` builds it) gets the exception to handle."""
    app = make_app("memory://", db_url, table_prefix)
    with pytest.raises(ConfigurationError, match="schema revision none"):
        app.Worker(pool="solo", without_mingle=True, without_gossip=True, hostname=table_prefix)
    Reliable.of(app).database.dispose()
