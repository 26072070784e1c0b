"""Replaying dead letters: each entry published again through the transactional outbox.

One transaction per replay (or per chunk of a batch): the outbox row under the entry's
message id, the lift of the inbox's quarantine of that message (so the replay runs, once),
and the entry's replay mark commit together, or none of them does.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from functools import partial
from typing import Any

from celery import Celery, Signature
from celery.utils import uuid

from celery_reliable import wire
from celery_reliable.clock import utcnow
from celery_reliable.exceptions import DeadLetterNotFound, InvalidArgument, ReliableError
from celery_reliable.message import MESSAGE_ID_HEADER, validate_message_id
from celery_reliable.outbox import MessagePlan, Outbox
from celery_reliable.store.base import InboxStore
from celery_reliable.store.dead_letter_rows import DeadLetterRows

from .fitting import entry_of, from_json
from .types import DeadLetter, DeadLetterFilter, Transform, require_count

logger = logging.getLogger(__name__)

#: Headers Celery sets on every message by itself: a replay gets fresh ones.
_PROTOCOL_HEADERS = frozenset(
    {
        "id",
        "task",
        "root_id",
        "parent_id",
        "group",
        "group_index",
        "retries",
        "eta",
        "expires",
        "timelimit",
        "argsrepr",
        "kwargsrepr",
        "origin",
        "lang",
        "shadow",
        "ignore_result",
        "replaced_task_nesting",
        "stamped_headers",
        "stamps",
    }
)
#: celery_reliable's own bookkeeping headers, from the task pipeline.
INTERNAL_HEADER_PREFIX = "reliable_"
#: Entries replayed per transaction by ``replay_batch``.
REPLAY_CHUNK = 500

#: Builds the outbox row of one entry row read in a chunk, at the chunk's time.
_Prepare = Callable[[Any, datetime], dict[str, Any]]


class Replayer:
    """Replays entries: one by id, or every match of a filter in chunks."""

    def __init__(
        self, app: Celery, rows: DeadLetterRows, inbox_store: InboxStore, outbox: Outbox
    ) -> None:
        self._app = app
        self._rows = rows
        self._inbox_store = inbox_store
        self._outbox = outbox

    def replay(self, entry_id: int, transform: Transform | None) -> str:
        """Publish the entry again through the outbox; return the new Celery task id."""
        rows = self._rows
        with rows.transaction() as conn:
            row = rows.lock(conn, entry_id)
            if row is None:
                raise DeadLetterNotFound(f"no dead-letter entry {entry_id!r}")
            entry = entry_of(row)
            outbox_row, task_id = self.prepare(entry, transform)
            if entry.handler_key is not None:
                self._inbox_store.lift_quarantine(
                    [entry.message_id], entry.handler_key, connection=conn
                )
            rows.record_replays(conn, [outbox_row], [entry_id], utcnow())
        logger.info("dead-letter entry %s replayed as message %s", entry_id, entry.message_id)
        return task_id

    def prepare(self, entry: DeadLetter, transform: Transform | None) -> tuple[dict[str, Any], str]:
        """The outbox row that publishes ``entry`` again, and its new Celery task id."""
        signature = self._signature(entry)
        if transform is not None:
            signature = transform(signature)
            if not isinstance(signature, Signature):
                raise InvalidArgument(f"transform must return a signature, returned {signature!r}")
        task_id = str(signature.options.get("task_id") or uuid())
        signature.set(task_id=task_id)
        row = self._outbox.build_row(signature, entry.message_id, None, None, None, {})
        return row, task_id

    def _prepare_whole(self, transform: Transform, row: Any, now: datetime) -> dict[str, Any]:
        """The outbox row for a whole entry read in a chunk; it gets its own time, as
        :meth:`replay` gives it."""
        return self.prepare(entry_of(row), transform)[0]

    def _signature(self, entry: DeadLetter) -> Signature:
        _require_replayable(entry.id, entry.task_name, entry.args, entry.reason.value)
        options = _replay_options(entry.delivery_info, self._app.amqp.queues)
        return self._app.signature(
            entry.task_name,
            args=tuple(entry.args),
            kwargs=dict(entry.kwargs or {}),
            headers=_replay_headers(entry.message_id, entry.headers),
            **options,
        )

    def batch(
        self,
        matching: DeadLetterFilter,
        *,
        limit: int | None,
        dry_run: bool,
        transform: Transform | None,
        rate_limit: float | None,
        stop_after_failures: int | None,
        progress: Callable[[int], None] | None,
    ) -> int:
        """``DeadLetters.replay_batch`` (documented there), of the entries not replayed yet."""
        if limit is not None:
            require_count(limit, "limit")
        if rate_limit is not None and (not isinstance(rate_limit, (int, float)) or rate_limit <= 0):
            raise InvalidArgument(f"rate_limit must be a positive number, got {rate_limit!r}")
        matching = replace(matching, replayed=False)
        if dry_run:
            return self._rows.count(matching, limit)
        last_id = self._rows.last_id(matching)
        if last_id is None:
            return 0
        # Under a rate limit, at most a hundredth of a second's worth per chunk: smooth pacing.
        chunk = (
            REPLAY_CHUNK if rate_limit is None else max(1, min(REPLAY_CHUNK, int(rate_limit / 100)))
        )
        replayed = failures = 0
        after = 0  # ids are positive: keyset pagination, oldest first
        prepare: _Prepare
        if transform is None:  # only what a replay needs is read (not the traceback)
            prepare = _BatchReplay(self._outbox, self._app.amqp.queues).row
        else:
            prepare = partial(self._prepare_whole, transform)
        next_at = time.monotonic()
        while limit is None or replayed + failures < limit:
            size = chunk if limit is None else min(chunk, limit - replayed - failures)
            time.sleep(max(0.0, next_at - time.monotonic()))
            done, failed, after = self._chunk(matching, after, last_id, size, prepare, transform)
            if rate_limit:  # the pause counts from the chunk's end: never faster than the limit
                next_at = time.monotonic() + size / rate_limit
            replayed += done
            failures += failed
            if progress is not None and done + failed:
                progress(done + failed)
            if stop_after_failures is not None and failures >= stop_after_failures:
                logger.error("replay batch stopped after %d failures", failures)
                break
            if done + failed < size:
                break
        return replayed

    def _chunk(
        self,
        matching: DeadLetterFilter,
        after: int,
        last_id: int,
        size: int,
        prepare: _Prepare,
        transform: Transform | None,
    ) -> tuple[int, int, int]:
        """Replay up to ``size`` entries with ids in (after, last_id]: (done, failed, last id).

        Rows are locked (``SKIP LOCKED``: an entry another batch or a single replay holds is
        being replayed already) and their replay count is checked again under the lock.
        """
        rows_store = self._rows
        failed = 0
        rows: Sequence[Any] = ()
        try:
            with rows_store.transaction() as conn:
                rows = rows_store.lock_chunk(
                    conn, matching, after, last_id, size, whole=transform is not None
                )
                if not rows:
                    return 0, 0, last_id
                outbox_rows: list[dict[str, Any]] = []
                by_handler: dict[str, list[str]] = defaultdict(list)
                entry_ids: list[int] = []
                now = utcnow()
                for row in rows:
                    try:
                        outbox_rows.append(prepare(row, now))
                    except Exception:
                        failed += 1
                        logger.warning(
                            "replay of dead-letter entry %s failed", row.id, exc_info=True
                        )
                        continue
                    entry_ids.append(row.id)
                    if row.handler_key is not None:
                        by_handler[row.handler_key].append(row.message_id)
                if outbox_rows:
                    for handler_key, message_ids in by_handler.items():
                        self._inbox_store.lift_quarantine(message_ids, handler_key, connection=conn)
                    rows_store.record_replays(conn, outbox_rows, entry_ids, now)
        except rows_store.failures:
            if not rows:
                raise  # the entries could not even be read: the store is the problem
            logger.warning(
                "replaying %d entries at once failed: one by one", len(rows), exc_info=True
            )
            done, failed = self._each([row.id for row in rows], transform)
            return done, failed, rows[-1].id
        logger.info(
            "%d dead-letter entries replayed (ids %s to %s)",
            len(entry_ids),
            rows[0].id,
            rows[-1].id,
        )
        return len(entry_ids), failed, rows[-1].id

    def _each(self, entry_ids: Sequence[int], transform: Transform | None) -> tuple[int, int]:
        """:meth:`replay` entry by entry, so that one bad entry fails alone: (done, failed)."""
        done = failed = 0
        for entry_id in entry_ids:
            try:
                self.replay(entry_id, transform)
            except Exception:
                failed += 1
                logger.warning("replay of dead-letter entry %s failed", entry_id, exc_info=True)
            else:
                done += 1
        return done, failed


def _require_replayable(entry_id: int, task_name: str | None, args: Any, reason: str) -> None:
    if task_name is None or args is None:
        raise ReliableError(
            f"dead-letter entry {entry_id} has no decodable task and arguments "
            f"({reason}); it can be inspected but not replayed"
        )


def _replay_headers(message_id: str, headers: Mapping[str, Any]) -> dict[str, Any]:
    """The stored headers a replay sends again: not Celery's own, not the failed run's."""
    kept = {
        key: value
        for key, value in headers.items()
        if key not in _PROTOCOL_HEADERS and not key.startswith(INTERNAL_HEADER_PREFIX)
    }
    kept[MESSAGE_ID_HEADER] = message_id
    return kept


def _replay_options(delivery_info: Mapping[str, Any], queues: Mapping[str, Any]) -> dict[str, Any]:
    """The queue (if still declared) and priority the entry was delivered with."""
    options: dict[str, Any] = {}
    routing_key = delivery_info.get("routing_key")
    if routing_key and routing_key in queues:
        options["queue"] = routing_key
    if delivery_info.get("priority") is not None:
        options["priority"] = delivery_info["priority"]
    return options


class _BatchReplay:
    """The outbox rows of one ``replay_batch`` without a transform, built without signatures.

    Each row is what :meth:`Replayer.prepare` builds for the entry: the same headers and
    options, and the message by the outbox's MessagePlan for the task and options, shared
    by the batch's entries (an unknown task's error too). Delivery infos repeat, so their
    options are cached.
    """

    def __init__(self, outbox: Outbox, queues: Mapping[str, Any]) -> None:
        self._outbox = outbox
        self._queues = queues
        self._plans: dict[tuple[str, str], MessagePlan | Exception] = {}
        self._options: dict[str, tuple[dict[str, Any], str]] = {}
        self._task_ids = wire.delivery_tags()  # random UUIDs, as celery.utils.uuid makes

    def row(self, row: Any, now: datetime) -> dict[str, Any]:
        """The outbox row for an entry read as ``REPLAY_COLUMNS``, created at ``now`` (the
        chunk's time: its rows differ in their messages only)."""
        entry_id, message_id, task_name, _, args, kwargs, headers, delivery_info, reason = row
        args = from_json(args)
        _require_replayable(entry_id, task_name, args, reason)
        cached = self._options.get(delivery_info)
        if cached is None:
            options = _replay_options(from_json(delivery_info) or {}, self._queues)
            cached = options, repr(options)  # a key even for an odd (unhashable) priority
            if len(self._options) < 1000:
                self._options[delivery_info] = cached
        options, options_key = cached
        key = (task_name, options_key)
        plan = self._plans.get(key)
        if plan is None:
            try:
                plan = MessagePlan(self._outbox, task_name, dict(options))
            except Exception as exc:  # fails each entry of the task alike
                plan = exc
            self._plans[key] = plan
        if isinstance(plan, Exception):  # raised afresh: no traceback grows entry by entry
            raise plan.with_traceback(None)
        headers = _replay_headers(validate_message_id(message_id), from_json(headers) or {})
        kwargs = dict(from_json(kwargs) or {})
        return plan.row(next(self._task_ids), tuple(args), kwargs, headers, now=now)
