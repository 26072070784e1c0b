"""The declared schema. Migrations must produce exactly this (tests/integration/test_schema.py).

Every table name carries the configured prefix, so one database can hold several apps' stores
and the tests can give each test its own tables.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from functools import cache
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
)
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator, TypeEngine

KEY_LENGTH = 255

#: Message ids and handler keys: case-sensitive everywhere (MySQL's default collation is not).
Key = String(KEY_LENGTH).with_variant(
    mysql.VARCHAR(KEY_LENGTH, collation="utf8mb4_bin"), "mysql", "mariadb"
)
#: Tracebacks and results: MySQL's TEXT stops at 64 KiB.
LongText = Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb")
#: Serialized message bodies: MySQL's BLOB stops at 64 KiB.
LongBinary = LargeBinary().with_variant(mysql.LONGBLOB(), "mysql", "mariadb")
#: Row ids in commit-ish order; SQLite autoincrements only a plain INTEGER primary key.
RowId = BigInteger().with_variant(Integer(), "sqlite")
#: The largest row id (and LIMIT or OFFSET) every store takes: a signed 64-bit integer.
#: A larger number typed by a user is an error to report, not a query to send.
MAX_ROW_ID = 2**63 - 1
#: PostgreSQL: room in each outbox page for a claim's new row version (see migration 0006).
OUTBOX_FILLFACTOR = 70


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in, aware UTC datetimes out, on every dialect.

    Stored naive in UTC because MySQL and SQLite keep no zone; microseconds are kept on MySQL
    (DATETIME(6)) since lease comparisons need sub-second precision.
    """

    impl = DateTime
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name in ("mysql", "mariadb"):
            return dialect.type_descriptor(mysql.DATETIME(fsp=6))
        return dialect.type_descriptor(DateTime())

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the reliable store; use UTC-aware values")
        return value.astimezone(timezone.utc).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=timezone.utc)


@dataclass(frozen=True)
class Tables:
    """The tables of one store, named with its prefix."""

    prefix: str
    metadata: MetaData
    inbox_message: Table
    inbox_status: Table
    outbox: Table
    dead_letter: Table

    @property
    def version_table(self) -> str:
        """Alembic's version table, prefixed so it never meets the application's own."""
        return f"{self.prefix}alembic_version"


@cache
def build_tables(prefix: str) -> Tables:
    """Declare the tables for ``prefix`` (cached: statements compiled once per prefix)."""
    metadata = MetaData()
    inbox_message = Table(
        f"{prefix}inbox_message",
        metadata,
        Column("message_id", Key, primary_key=True),
        Column("task_name", String(KEY_LENGTH), nullable=False),
        Column("first_seen_at", UTCDateTime(), nullable=False),
    )
    inbox_status = Table(
        f"{prefix}inbox_status",
        metadata,
        Column("message_id", Key, primary_key=True),
        Column("handler_key", Key, primary_key=True),
        # processing | failed | completed | poisoned (see celery_reliable.inbox.Status)
        Column("status", String(16), nullable=False),
        Column("attempts", Integer, nullable=False),
        # Fencing token: every claim bumps it; completion must match it or it changes nothing.
        Column("version", Integer, nullable=False),
        Column("owner", String(KEY_LENGTH)),
        Column("last_error", LongText),
        Column("processing_started_at", UTCDateTime()),
        Column("completed_at", UTCDateTime()),
        Column("result", LongText),
    )
    outbox = Table(
        f"{prefix}outbox",
        metadata,
        Column("id", RowId, primary_key=True, autoincrement=True),
        Column("message_id", Key, nullable=False),  # what the inbox will see
        Column("task_id", String(KEY_LENGTH), nullable=False),
        Column("task_name", String(KEY_LENGTH), nullable=False),
        Column("queue", String(KEY_LENGTH)),  # declared before publishing, as Celery does
        Column("exchange", String(KEY_LENGTH), nullable=False),
        Column("routing_key", String(KEY_LENGTH), nullable=False),
        # The message exactly as it will be published: the relay only moves bytes.
        Column("body", LongBinary, nullable=False),
        Column("content_type", String(128), nullable=False),
        Column("content_encoding", String(64), nullable=False),
        Column("headers", LongText, nullable=False),  # JSON
        Column("properties", LongText, nullable=False),  # JSON
        # The transport the message is prepared for (celery_reliable.wire), if any, and
        # what it needs besides the columns above (AMQP: the serialized properties).
        Column("wire_format", String(16)),
        Column("wire", LongBinary),
        Column("ordering_key", Key),
        # pending | sent | poisoned (see celery_reliable.relay)
        Column("status", String(16), nullable=False),
        Column("attempts", Integer, nullable=False),
        Column("last_error", LongText),
        Column("created_at", UTCDateTime(), nullable=False),
        Column("available_at", UTCDateTime(), nullable=False),  # due time, or the next retry
        Column("claim_token", String(64)),  # the relay batch that holds the row, if any
        Column("claimed_at", UTCDateTime()),
        Column("sent_at", UTCDateTime()),
        # Times stuck recovery published it again because no inbox saw it (capped).
        Column("redeliveries", Integer, nullable=False, server_default="0"),
        Index(f"{prefix}outbox_due", "status", "available_at", "id"),
        Index(f"{prefix}outbox_ordering", "ordering_key", "status", "id"),
        postgresql_with={"fillfactor": OUTBOX_FILLFACTOR},
    )
    dead_letter = Table(
        f"{prefix}dead_letter",
        metadata,
        Column("id", RowId, primary_key=True, autoincrement=True),
        Column("message_id", Key, nullable=False),
        Column("task_id", String(KEY_LENGTH)),
        Column("task_name", String(KEY_LENGTH)),  # None when the message named no task
        Column("handler_key", Key),  # None when it never reached a task
        # JSON, after the redaction hook; None when the body could not be decoded
        Column("args", LongText),
        Column("kwargs", LongText),
        Column("headers", LongText, nullable=False),
        Column("delivery_info", LongText, nullable=False),
        # The undecoded body, kept when args/kwargs could not be read (or were not JSON).
        Column("raw_body", LongBinary),
        Column("content_type", String(128)),
        Column("content_encoding", String(64)),
        Column("reason", String(64), nullable=False),  # a DeadLetterReason value
        Column("detector", String(KEY_LENGTH)),  # the poison detector that decided, if any
        Column("exception_type", String(KEY_LENGTH)),
        Column("exception_message", LongText),
        Column("traceback", LongText),
        # exception type + first frame in application code: failures with one root cause
        Column("failure_group", String(KEY_LENGTH)),
        Column("attempts", Integer, nullable=False),
        Column("first_seen_at", UTCDateTime()),
        Column("dead_lettered_at", UTCDateTime(), nullable=False),
        Column("hostname", String(KEY_LENGTH)),
        Column("replay_count", Integer, nullable=False),
        Column("replayed_at", UTCDateTime()),
        Index(f"{prefix}dead_letter_time", "dead_lettered_at"),
        Index(f"{prefix}dead_letter_reason", "reason", "dead_lettered_at"),
        Index(f"{prefix}dead_letter_task", "task_name", "dead_lettered_at"),
        Index(f"{prefix}dead_letter_message", "message_id"),
    )
    return Tables(prefix, metadata, inbox_message, inbox_status, outbox, dead_letter)
