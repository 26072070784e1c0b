"""Lease renewal: a running body keeps its claim from looking abandoned.

A claim's lease is its ``processing_started_at``: a copy of the message that finds the row
``processing`` with a lease younger than ``reliable_stuck_threshold`` waits for the live
run instead of taking it over, and stuck recovery leaves it alone. Without renewal a body
that runs longer than the threshold would be taken over while alive, and its external
effects (a payment call) would happen twice.

One daemon thread per process renews the lease of every run in progress every
:func:`renew_interval` (a third of the threshold, at most 10 s). Each renewal is fenced by
the claim's version, so it never revives a claim that was taken over or finished. A process
that dies stops renewing, so its claim is still taken over once the threshold has passed
since the last renewal.

The short interval lets a copy that the broker flagged redelivered tell a live run from a
dead one within seconds: a lease that is renewed never gets older than the
:func:`renewal_grace`, so a flagged copy that finds it younger waits for the live run (a
Redis visibility timeout or a lost RabbitMQ connection restores the message of a run that
is still going), and takes over a dead run's claim once it is older.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

from celery_reliable.clock import utcnow
from celery_reliable.inbox import Claim
from celery_reliable.store.base import InboxStore

from .guard import InfrastructureFailure, guarded, site

logger = logging.getLogger(__name__)

RENEW = site("inbox.renew_lease", "renew the lease of a running claim (a timer thread)")

#: The longest wait between two renewals of a running claim's lease.
MAX_RENEW_INTERVAL = timedelta(seconds=10)
#: How many renewal intervals a lease may miss before a flagged copy takes its claim over:
#: room for a renewal delayed by a busy machine or a slow store round trip.
GRACE_INTERVALS = 2.5


def renew_interval(stuck_threshold: timedelta) -> timedelta:
    """How often a running claim's lease is renewed: short, whatever the threshold."""
    return min(stuck_threshold / 3, MAX_RENEW_INTERVAL)


def renewal_grace(stuck_threshold: timedelta) -> timedelta:
    """The lease age past which a claim is no longer renewed: its run is dead."""
    return renew_interval(stuck_threshold) * GRACE_INTERVALS


class LeaseKeeper:
    """Renews the leases of the runs in progress in this process."""

    def __init__(self, store: InboxStore, stuck_threshold: timedelta) -> None:
        self.store = store
        self.interval = renew_interval(stuck_threshold).total_seconds()
        self._claims: dict[int, Claim] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._pid = 0

    @contextmanager
    def kept(self, claim: Claim) -> Iterator[None]:
        """Renew ``claim``'s lease while the block runs."""
        key = id(claim)
        with self._lock:
            self._claims[key] = claim
            self._start()
        try:
            yield
        finally:
            with self._lock:
                self._claims.pop(key, None)

    def _start(self) -> None:
        """Start the renewing thread once per process (a forked child has none)."""
        if self._pid == os.getpid():
            return
        self._pid = os.getpid()
        name = f"reliable-lease-{self._pid}"
        threading.Thread(target=self._renew_forever, name=name, daemon=True).start()

    def _renew_forever(self) -> None:
        while not self._wake.wait(self.interval):
            with self._lock:
                claims = list(self._claims.values())
            for claim in claims:
                self.renew(claim)

    def renew(self, claim: Claim) -> bool:
        """Move the lease of ``claim`` to now; False if it is no longer this run's."""
        try:
            with guarded(RENEW):
                return self.store.renew_lease(
                    claim.message_id, claim.handler_key, claim.version, utcnow()
                )
        except InfrastructureFailure as exc:  # the next tick tries again
            logger.warning("could not renew the lease of %s: %s", claim.message_id, exc)
        except Exception:
            logger.exception("lease renewal of %s failed", claim.message_id)
        return False
