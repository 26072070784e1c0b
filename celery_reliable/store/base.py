"""The port between the inbox and whatever keeps its rows.

The inbox (``celery_reliable.inbox``) decides; a store only reads and writes rows. Every write
that ends or hands over a claim is *fenced*: it names the version it expects and changes
nothing when another delivery has moved the row on. That one rule is what makes a stale
worker harmless.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol


class Status(str, enum.Enum):
    """Where one (message id, handler key) pair stands."""

    PROCESSING = "processing"  # claimed; a run is (or was, if it crashed) under way
    FAILED = "failed"  # the last run raised; a retry or redelivery may claim it again
    COMPLETED = "completed"  # effects committed; never run again
    POISONED = "poisoned"  # quarantined; never run again, never deleted automatically


@dataclass(frozen=True)
class StatusRow:
    """One inbox status row as the inbox needs to see it."""

    handler_key: str
    status: Status
    attempts: int
    version: int
    processing_started_at: datetime | None
    result: str | None


class InboxStore(Protocol):
    """Row operations of the inbox. ``connection`` lets a write join the caller's transaction."""

    #: What a write raises when the store failed under it (it may or may not have committed).
    failures: tuple[type[BaseException], ...]

    def insert_claim(
        self, message_id: str, handler_key: str, task_name: str, now: datetime, owner: str
    ) -> bool:
        """Insert a first claim (attempt 1, version 1); False if the pair already exists."""

    def get_status(
        self, message_id: str, handler_key: str, *, connection: Any = None
    ) -> StatusRow | None:
        """The status row of the pair, if any."""

    def find_completed(self, message_id: str, handler_keys: Sequence[str]) -> StatusRow | None:
        """A completed row of the message under any of ``handler_keys``."""

    def take_over(
        self,
        message_id: str,
        handler_key: str,
        expected_version: int,
        now: datetime,
        owner: str,
        *,
        count_attempt: bool = True,
    ) -> bool:
        """Claim an existing row again (attempts + 1, version + 1) if still at that version.

        ``count_attempt=False`` keeps the attempt count: the claim taken over never ran.
        """

    def finish(
        self,
        message_id: str,
        handler_key: str,
        expected_version: int,
        status: Status,
        now: datetime,
        *,
        result: str | None = None,
        error: str | None = None,
        connection: Any = None,
    ) -> bool:
        """Move a claimed row to ``status`` if still at that version; False if superseded."""

    def renew_lease(
        self, message_id: str, handler_key: str, expected_version: int, now: datetime
    ) -> bool:
        """Move a running claim's lease to ``now`` if still at that version and processing."""

    def lift_quarantine(
        self, message_ids: Sequence[str], handler_key: str | None, *, connection: Any
    ) -> int:
        """Let poisoned pairs run again (attempts 0, new version) in the caller's transaction."""

    def release_interrupted(self, message_id: str, handler_key: str, owner: str) -> bool:
        """Hand back a claim whose run a shutdown interrupted, uncounting its attempt."""

    def first_seen_at(self, message_id: str) -> datetime | None:
        """When the message was first claimed under any handler key."""
