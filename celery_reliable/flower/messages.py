"""Dead letters as messages: the entries of one message, grouped on the pages.

A replay that fails again adds a new entry under the same message id, so the store holds
one entry per failure, not per message: six messages replayed twice while still broken
show as eight entries. The operator asks how many *messages* are dead, and what happened
to each (how many, ``statistics().messages``, counts). This module answers from the
store (entries per message, one message's history) and orders a page of entries so a
message's entries sit together.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, Table, func, select

from celery_reliable.dead_letters import DeadLetter


@dataclass(frozen=True)
class Failure:
    """One entry of a message, as its history lists it."""

    id: int
    reason: str
    dead_lettered_at: datetime
    replay_count: int
    replayed_at: datetime | None


@dataclass(frozen=True)
class Row:
    """An entry on the list page, with the size of its message's group."""

    entry: DeadLetter
    entries_of_message: int
    #: False for the second and later entries of a message on the same page.
    first_of_message: bool


class MessageGroups:
    """Queries over the dead-letter table by message id (read only)."""

    def __init__(self, engine: Engine, table: Table) -> None:
        self.engine = engine
        self.table = table

    def sizes(self, message_ids: Iterable[str]) -> dict[str, int]:
        """Entries in the whole store for each of these message ids."""
        wanted = sorted(set(message_ids))
        if not wanted:
            return {}
        c = self.table.c
        query = (
            select(c.message_id, func.count())
            .where(c.message_id.in_(wanted))
            .group_by(c.message_id)
        )
        with self.engine.connect() as conn:
            return {str(message_id): int(n) for message_id, n in conn.execute(query)}

    def history(self, message_id: str) -> list[Failure]:
        """Every entry of the message, oldest first: each failure, and what replayed it."""
        c = self.table.c
        query = (
            select(c.id, c.reason, c.dead_lettered_at, c.replay_count, c.replayed_at)
            .where(c.message_id == message_id)
            .order_by(c.id)
        )
        with self.engine.connect() as conn:
            return [Failure(*row) for row in conn.execute(query)]

    def rows(self, entries: list[DeadLetter]) -> list[Row]:
        """A page of entries (newest first), each message's entries together."""
        return grouped(entries, self.sizes(e.message_id for e in entries))


def grouped(entries: list[DeadLetter], sizes: dict[str, int]) -> list[Row]:
    """Entries in the order given, except that a message's later-listed entries follow its
    first-listed one; the page order of messages is kept."""
    by_message: dict[str, list[DeadLetter]] = {}
    for entry in entries:
        by_message.setdefault(entry.message_id, []).append(entry)
    return [
        Row(entry, sizes.get(message_id, len(group)), first_of_message=index == 0)
        for message_id, group in by_message.items()
        for index, entry in enumerate(group)
    ]
