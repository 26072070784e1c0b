"""OpenTelemetry metrics, meter ``celery_reliable``; no-ops when no SDK is configured.

Instruments are created through the global meter provider, so whatever the application
configures (a Prometheus exporter, OTLP, the SDK's in-memory reader in tests) receives
them, and nothing is recorded anywhere when it configures nothing. Without the
``opentelemetry-api`` package (the ``otel`` extra) every instrument is a no-op.

Counters and histograms are recorded where things happen. The gauges (outbox backlog and
its oldest age, dead letters awaiting review) need queries: they are computed when the
SDK collects (its own thread, never a task's), at most every ``GAUGE_REFRESH`` seconds, and
a query that does not answer within ``GAUGE_TIMEOUT`` keeps the previous values.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
import weakref
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from .message import SENT_AT_HEADER

if TYPE_CHECKING:
    from .extension import Reliable

try:
    from opentelemetry import metrics as otel_metrics
except ImportError:  # pragma: no cover - the otel extra is optional
    otel_metrics = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

METER = "celery_reliable"
GAUGE_REFRESH = 15.0
GAUGE_TIMEOUT = 5.0


class _Noop:
    """Stands in for an instrument when opentelemetry-api is not installed."""

    def add(self, amount: float, attributes: Mapping[str, Any] | None = None) -> None:
        pass

    def record(self, amount: float, attributes: Mapping[str, Any] | None = None) -> None:
        pass


_GAUGES = (
    ("outbox.pending", "{message}", "Outbox rows due and not yet published"),
    ("outbox.oldest_age", "s", "Age of the oldest due outbox row"),
    ("dead_letter.depth", "{message}", "Dead letters awaiting review"),
    ("outbox.poisoned", "{message}", "Outbox rows that gave up, waiting for a person"),
    ("inbox.poisoned", "{message}", "Messages quarantined by the inbox"),
)
_LIVE: weakref.WeakSet[Metrics] = weakref.WeakSet()
_registered = False
_register_lock = threading.Lock()


def _register_gauges(meter: Any) -> None:
    """Register the gauges once per process; each collection observes every live app.

    The SDK keeps the first instrument of a name and ignores the callbacks of later
    ones, so per-app gauges would report the first app only.
    """
    global _registered
    with _register_lock:
        if _registered:
            return
        _registered = True
    for name, unit, description in _GAUGES:

        def observe(options: Any, name: str = name) -> Iterable[Any]:
            observations = []
            for metrics in list(_LIVE):
                value = metrics.gauges().get(name)
                if value is not None and otel_metrics is not None:
                    app = metrics._reliable.app.main
                    observations.append(otel_metrics.Observation(value, {"app": app}))
            return observations

        meter.create_observable_gauge(
            f"{METER}.{name}", callbacks=[observe], unit=unit, description=description
        )


class Metrics:
    """``reliable.metrics``: every instrument of SPEC §5, created once per app."""

    def __init__(self, reliable: Reliable) -> None:
        self._reliable = reliable
        meter = otel_metrics.get_meter(METER) if otel_metrics is not None else None

        def counter(name: str, unit: str, description: str) -> Any:
            if meter is None:
                return _Noop()
            return meter.create_counter(f"{METER}.{name}", unit=unit, description=description)

        def histogram(name: str, unit: str, description: str) -> Any:
            if meter is None:
                return _Noop()
            return meter.create_histogram(f"{METER}.{name}", unit=unit, description=description)

        self.outbox_processed = counter(
            "outbox.process.count", "{message}", "Outbox rows published (status=sent) or not"
        )
        self.outbox_poisoned = counter(
            "outbox.poison.count", "{message}", "Outbox rows that used up their attempts"
        )
        self.outbox_batch_size = histogram(
            "outbox.batch.size", "{message}", "Rows claimed per relay batch"
        )
        self.outbox_duration = histogram(
            "outbox.process.duration", "s", "Time to publish and mark one relay batch"
        )
        self.inbox_delivered = counter(
            "inbox.deliver.count", "{message}", "Deliveries to a ReliableTask, by outcome"
        )
        self.inbox_duplicates = counter(
            "inbox.duplicate.count", "{message}", "Deliveries of messages already processed"
        )
        self.inbox_poisoned = counter(
            "inbox.poison.count", "{message}", "Messages quarantined by the inbox"
        )
        self.inbox_duration = histogram(
            "inbox.process.duration", "s", "Claim, body and completion of one delivery"
        )
        self.dead_letters = counter(
            "dead_letter.count", "{message}", "Messages dead-lettered, by reason"
        )
        self.lock_failures = counter(
            "lock.acquisition.failure", "{lock}", "Maintenance locks another instance held"
        )
        self.locks_lost = counter("lock.lost", "{lock}", "Locks lost while their work ran")
        self.breaker_transitions = counter(
            "circuit_breaker.transitions", "{transition}", "Circuit breaker state changes"
        )
        self.manual_retries = counter(
            "manual.retry.count", "{row}", "Poisoned rows an operator sent again, by kind"
        )
        self.receive_lag = histogram(
            "receive.lag", "s", "From publishing (or outbox commit) to the worker receiving it"
        )
        self.process_lag = histogram(
            "process.lag", "s", "From publishing (or outbox commit) to the task starting"
        )
        self._gauge_values: dict[str, float] = {}
        self._gauges_at = 0.0
        self._gauge_lock = threading.Lock()
        _LIVE.add(self)
        if meter is not None:
            _register_gauges(meter)

    def gauges(self) -> dict[str, float]:
        """The gauge values, refreshed at most every GAUGE_REFRESH seconds."""
        with self._gauge_lock:
            if time.monotonic() - self._gauges_at < GAUGE_REFRESH:
                return self._gauge_values
            self._gauges_at = time.monotonic()
            pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
            try:
                self._gauge_values = pool.submit(self._query_gauges).result(GAUGE_TIMEOUT)
            except Exception as exc:  # a slow or absent store keeps the last values
                logger.warning("celery_reliable gauges not refreshed: %s", exc)
            finally:
                pool.shutdown(wait=False)
            return self._gauge_values

    def _query_gauges(self) -> dict[str, float]:
        stats = self._reliable.admin.outbox_stats()
        age = stats.oldest_due_age
        return {
            "outbox.pending": float(stats.due),
            "outbox.oldest_age": 0.0 if age is None else age.total_seconds(),
            "dead_letter.depth": float(self._reliable.dead_letters.count(replayed=False)),
            "outbox.poisoned": float(stats.poisoned),
            "inbox.poisoned": float(self._reliable.admin.inbox_stats()["poisoned"]),
        }

    # -- recording, with the attributes every instrument of a kind shares ---------------

    def record_start(self, task: Any, headers: Mapping[str, Any]) -> None:
        """A ReliableTask starts: how long since its message was published (or due)."""
        lag = _since(headers.get(SENT_AT_HEADER))
        if lag is not None:
            self.process_lag.record(lag, {"task": task.name})

    def record_received(self, task_name: str, headers: Mapping[str, Any]) -> None:
        lag = _since(headers.get(SENT_AT_HEADER))
        if lag is not None:
            self.receive_lag.record(lag, {"task": task_name})

    def record_delivery(self, task: Any, outcome: str, seconds: float) -> None:
        attributes = {"task": task.name, "handler_key": task.handler_key or task.name}
        self.inbox_delivered.add(1, {**attributes, "outcome": outcome})
        self.inbox_duration.record(seconds, {**attributes, "outcome": outcome})
        if outcome == "duplicate":
            self.inbox_duplicates.add(1, attributes)


def _since(sent_at: Any) -> float | None:
    """Seconds since an epoch timestamp from a header; None for anything else."""
    if isinstance(sent_at, bool) or not isinstance(sent_at, (int, float)):
        return None
    return max(0.0, time.time() - float(sent_at))
