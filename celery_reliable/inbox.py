"""The idempotent inbox: claim a (message id, handler key) pair, then complete or fail it.

A claim costs one round trip in the common case (a first delivery inserts its row). Only
when the row exists does the inbox read it and decide, in :func:`decide`, what this delivery
may do. Deciding in Python keeps the SQL identical on every database and the rules in one
place that unit tests can cover exhaustively.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from kombu.utils import json as kombu_json

from .clock import utcnow
from .exceptions import ClaimUncertain, LostOwnership, ReliableError, StoreUnavailable
from .store.base import InboxStore, Status, StatusRow

logger = logging.getLogger(__name__)

#: A delivery that finds its message in flight elsewhere comes back after at most this long.
IN_FLIGHT_RECHECK = timedelta(seconds=5)
_CLAIM_RACES = 5


class Outcome(enum.Enum):
    """What a delivery may do with its message."""

    RUN = "run"  # this delivery owns the claim: run the body
    DUPLICATE = "duplicate"  # completed before (under this or a legacy key): do not run
    IN_FLIGHT = "in_flight"  # a live delivery holds the claim: come back later
    POISONED = "poisoned"  # quarantined: never run
    EXHAUSTED = "exhausted"  # used up reliable_max_attempts: this delivery dead-letters it


class Action(enum.Enum):
    """What :func:`decide` tells the inbox to do with an existing row."""

    DUPLICATE = "duplicate"
    ALREADY_POISONED = "already_poisoned"
    IN_FLIGHT = "in_flight"
    POISON = "poison"
    TAKE_OVER = "take_over"
    RESUME = "resume"  # take over a claim that never ran the body: no new attempt counted


@dataclass(frozen=True)
class Claim:
    """The result of claiming; for RUN it carries the fencing version of this run.

    ``result`` is the row's JSON: a DUPLICATE's return value, a POISONED claim's ending.
    """

    outcome: Outcome
    message_id: str
    handler_key: str
    attempts: int = 0
    version: int = 0
    result: str | None = None
    retry_in: timedelta = timedelta(0)


def lease_limit(
    redelivered: bool, stuck_threshold: timedelta, renewal_grace: timedelta
) -> timedelta:
    """The lease age up to which a delivery takes a ``processing`` claim for a live run."""
    return renewal_grace if redelivered else stuck_threshold


def decide(
    row: StatusRow,
    *,
    redelivered: bool,
    now: datetime,
    stuck_threshold: timedelta,
    renewal_grace: timedelta,
    max_attempts: int,
    resumes_version: int | None = None,
    resumes_unrun: bool = False,
) -> Action:
    """Decide what a delivery may do with the existing status row of its message.

    A row still ``processing`` means an earlier run either is alive or crashed. A lease
    (renewed while the run lives) younger than its limit says it is alive: this delivery
    must wait, neither running nor dropping its copy, since it may be the only copy left.
    The limit is ``stuck_threshold``, or the shorter ``renewal_grace`` for a copy the broker
    flagged ``redelivered``: the flag says the delivery before it ended without an answer,
    which a crash does but so does a live run (a Redis visibility timeout restores its
    message, a RabbitMQ connection lost mid-run), and only a lease that stopped being
    renewed tells the two apart.
    ``resumes_version`` is set on a copy that a run re-published when it lost the store: it
    may take over the claim it abandoned (that version) at once. ``resumes_unrun`` says that
    claim never ran the body (the store failed while it was written): resuming it is the
    same attempt, not a new one.
    """
    if row.status is Status.COMPLETED:
        return Action.DUPLICATE
    if row.status is Status.POISONED:
        return Action.ALREADY_POISONED
    started = row.processing_started_at
    if (
        row.status is Status.PROCESSING
        and row.version != resumes_version
        and started is not None
        and now - started < lease_limit(redelivered, stuck_threshold, renewal_grace)
    ):
        return Action.IN_FLIGHT
    unrun = resumes_unrun and row.status is Status.PROCESSING and row.version == resumes_version
    if row.attempts - unrun >= max_attempts:
        return Action.POISON
    return Action.RESUME if unrun else Action.TAKE_OVER


class Inbox:
    """Claims, completes and fails messages through an :class:`InboxStore`."""

    def __init__(
        self,
        store: InboxStore,
        *,
        max_attempts: int,
        stuck_threshold: timedelta,
        renewal_grace: timedelta,
        store_results: bool,
    ) -> None:
        self.store = store
        self.max_attempts = max_attempts
        self.stuck_threshold = stuck_threshold
        #: The lease age past which a flagged redelivery takes a ``processing`` claim over.
        self.renewal_grace = renewal_grace
        self.store_results = store_results

    def claim(
        self,
        message_id: str,
        handler_key: str,
        *,
        task_name: str,
        owner: str,
        redelivered: bool = False,
        legacy_keys: Sequence[str] = (),
        resumes_version: int | None = None,
        resumes_unrun: bool = False,
    ) -> Claim:
        """Claim the message for ``handler_key``: count the attempt, or say why not to run."""
        if legacy_keys and (done := self.store.find_completed(message_id, legacy_keys)):
            return Claim(Outcome.DUPLICATE, message_id, handler_key, result=done.result)
        for _ in range(_CLAIM_RACES):
            now = utcnow()
            with self._uncertain(message_id, version=1):
                inserted = self.store.insert_claim(message_id, handler_key, task_name, now, owner)
            if inserted:
                return Claim(Outcome.RUN, message_id, handler_key, attempts=1, version=1)
            row = self.store.get_status(message_id, handler_key)
            if row is None:  # removed between the two statements (retention): insert again
                continue
            action = decide(
                row,
                redelivered=redelivered,
                now=now,
                stuck_threshold=self.stuck_threshold,
                renewal_grace=self.renewal_grace,
                max_attempts=self.max_attempts,
                resumes_version=resumes_version,
                resumes_unrun=resumes_unrun,
            )
            claim = self._act(action, row, message_id, handler_key, now, owner, redelivered)
            if claim is not None:
                return claim
        raise ReliableError(
            f"message {message_id!r} / {handler_key!r}: lost {_CLAIM_RACES} claim races in a row"
        )

    def _act(
        self,
        action: Action,
        row: StatusRow,
        message_id: str,
        handler_key: str,
        now: datetime,
        owner: str,
        redelivered: bool,
    ) -> Claim | None:
        """Carry out ``action``; None when a concurrent delivery moved the row first."""
        if action is Action.DUPLICATE:
            return Claim(
                Outcome.DUPLICATE, message_id, handler_key, row.attempts, result=row.result
            )
        if action is Action.ALREADY_POISONED:  # result: the ending its quarantine kept
            return Claim(Outcome.POISONED, message_id, handler_key, row.attempts, result=row.result)
        if action is Action.IN_FLIGHT:
            assert row.processing_started_at is not None
            limit = lease_limit(redelivered, self.stuck_threshold, self.renewal_grace)
            lease_left = row.processing_started_at + limit - now  # back when it would expire
            retry_in = max(min(lease_left, IN_FLIGHT_RECHECK), timedelta(seconds=0.1))
            return Claim(
                Outcome.IN_FLIGHT, message_id, handler_key, row.attempts, retry_in=retry_in
            )
        if action is Action.POISON:
            # The caller quarantines it (fenced by this version) together with its dead letter.
            return Claim(
                Outcome.EXHAUSTED, message_id, handler_key, row.attempts, version=row.version
            )
        counted = action is Action.TAKE_OVER
        with self._uncertain(message_id, version=row.version + 1):
            taken = self.store.take_over(
                message_id, handler_key, row.version, now, owner, count_attempt=counted
            )
        if taken:
            attempts = row.attempts + counted
            return Claim(Outcome.RUN, message_id, handler_key, attempts, version=row.version + 1)
        return None

    @contextmanager
    def _uncertain(self, message_id: str, *, version: int) -> Iterator[None]:
        """Turn a store failure during a claim write into ClaimUncertain(version)."""
        try:
            yield
        except self.store.failures as exc:
            raise ClaimUncertain(
                f"store failed while claiming {message_id!r}: {exc}", version=version
            ) from exc

    def complete(self, claim: Claim, result: Any = None, *, connection: Any = None) -> None:
        """Mark the claim completed (in ``connection``'s transaction when given).

        Raises LostOwnership when another delivery took the claim over (its run will finish
        the message), and StoreUnavailable when the claim row is gone (a store that lost
        an unflushed claim in a crash, or a row cleaned up): then the message must be tried
        again, never taken as done.
        """
        if self.store.finish(
            claim.message_id,
            claim.handler_key,
            claim.version,
            Status.COMPLETED,
            utcnow(),
            result=self.encode_result(result),
            connection=connection,
        ):
            return
        if self.store.get_status(claim.message_id, claim.handler_key, connection=connection):
            raise LostOwnership()
        raise StoreUnavailable(f"the claim of {claim.message_id!r} vanished from the store")

    def fail(self, claim: Claim, error: str) -> bool:
        """Record that the run raised, so a retry may claim at once instead of waiting a lease."""
        return self.store.finish(
            claim.message_id, claim.handler_key, claim.version, Status.FAILED, utcnow(), error=error
        )

    def quarantine(
        self, claim: Claim, error: str, *, ending: Any = None, connection: Any = None
    ) -> None:
        """Mark the claim poisoned (never run again); LostOwnership if it was taken over.

        ``ending`` (JSON) is kept in the row's result, whatever ``store_results`` says: not
        the task's return value but how it ended, which a later copy of the message ends
        with too (``Claim.result`` of a POISONED claim).
        """
        if not self.store.finish(
            claim.message_id,
            claim.handler_key,
            claim.version,
            Status.POISONED,
            utcnow(),
            result=None if ending is None else _json(ending),
            error=error,
            connection=connection,
        ):
            raise LostOwnership()

    def encode_result(self, result: Any) -> str | None:
        """``result`` as JSON, or None when it is not stored.

        Encoded before the completion commits: any failure to encode it costs the stored
        result only (a later duplicate returns None), never the run's completion.
        """
        return None if result is None or not self.store_results else _json(result)

    @staticmethod
    def decode_result(encoded: str | None) -> Any:
        return None if encoded is None else kombu_json.loads(encoded)  # type: ignore[no-untyped-call]


def _json(value: Any) -> str | None:
    """``value`` as the JSON a row keeps; None (not kept) when it cannot be encoded.

    Any failure counts (not JSON, a circular or too deeply nested value, a ``__json__``
    that raises): the value is only a copy kept for later duplicates.
    """
    try:
        return str(kombu_json.dumps(value))  # type: ignore[no-untyped-call]
    except Exception as exc:
        logger.warning(
            "result of type %s cannot be encoded as JSON (%s: %s); not stored",
            type(value).__name__,
            type(exc).__name__,
            exc,
        )
        return None
