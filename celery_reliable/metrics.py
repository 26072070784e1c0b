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
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar, cast, overload

from .message import SENT_AT_HEADER

if TYPE_CHECKING:
    from .admin import OutboxStats

try:
    from opentelemetry import metrics as otel_metrics
except ImportError:  # pragma: no cover - the otel extra is optional
    otel_metrics = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

METER = "celery_reliable"
GAUGE_REFRESH = 15.0
GAUGE_TIMEOUT = 5.0


class Counter(Protocol):
    def add(self, amount: float, attributes: Mapping[str, Any] | None = None) -> None: ...


class Histogram(Protocol):
    def record(self, amount: float, attributes: Mapping[str, Any] | None = None) -> None: ...


class _Noop:
    """Stands in for an instrument when opentelemetry-api is not installed."""

    def add(self, amount: float, attributes: Mapping[str, Any] | None = None) -> None:
        pass

    def record(self, amount: float, attributes: Mapping[str, Any] | None = None) -> None:
        pass


_I = TypeVar("_I", Counter, Histogram)


class Instrument(Generic[_I]):
    """One row of the instrument table in :class:`Metrics`: its kind, name, unit and description.

    The rows are class attributes, so mypy knows every instrument by name and kind.
    ``Metrics()`` creates the real instruments in the instance's ``__dict__``, which takes
    precedence over this descriptor (it defines no ``__set__``): reading a row through an
    instance is always the instrument.
    """

    def __init__(self, kind: str, name: str, unit: str, description: str) -> None:
        self.kind, self.name, self.unit, self.description = kind, name, unit, description
        self.attribute = ""

    def __set_name__(self, owner: type, attribute: str) -> None:
        self.attribute = attribute

    @overload
    def __get__(self, instance: None, owner: type) -> Instrument[_I]: ...
    @overload
    def __get__(self, instance: object, owner: type) -> _I: ...
    def __get__(self, instance: object, owner: type) -> Instrument[_I] | _I:
        if instance is None:
            return self
        raise AttributeError(f"{self.attribute}: Metrics.__init__ creates it")

    def create(self, meter: Any) -> _I:
        """The instrument on ``meter`` (``create_counter``/``create_histogram``), or a no-op."""
        if meter is None:
            return cast(_I, _Noop())
        create = getattr(meter, f"create_{self.kind}")
        return cast(
            _I, create(f"{METER}.{self.name}", unit=self.unit, description=self.description)
        )


def _counter(name: str, unit: str, description: str) -> Instrument[Counter]:
    return Instrument("counter", name, unit, description)


def _histogram(name: str, unit: str, description: str) -> Instrument[Histogram]:
    return Instrument("histogram", name, unit, description)


#: The observable gauges: (name, unit, description); values from :meth:`Metrics.gauges`.
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
                    attributes = {"app": metrics.app_name}
                    observations.append(otel_metrics.Observation(value, attributes))
            return observations

        meter.create_observable_gauge(
            f"{METER}.{name}", callbacks=[observe], unit=unit, description=description
        )


class Metrics:
    """``reliable.metrics``: every instrument of SPEC §5, created once per app.

    The class body is the table of counters and histograms (attribute, kind, name under
    the meter, unit, description); tests/integration/test_metrics.py pins the names.
    """

    outbox_processed = _counter(
        "outbox.process.count", "{message}", "Outbox rows published (status=sent) or not"
    )
    outbox_poisoned = _counter(
        "outbox.poison.count", "{message}", "Outbox rows that used up their attempts"
    )
    outbox_batch_size = _histogram("outbox.batch.size", "{message}", "Rows claimed per relay batch")
    outbox_duration = _histogram(
        "outbox.process.duration", "s", "Time to publish and mark one relay batch"
    )
    inbox_delivered = _counter(
        "inbox.deliver.count", "{message}", "Deliveries to a ReliableTask, by outcome"
    )
    inbox_duplicates = _counter(
        "inbox.duplicate.count", "{message}", "Deliveries of messages already processed"
    )
    inbox_poisoned = _counter(
        "inbox.poison.count", "{message}", "Messages quarantined by the inbox"
    )
    inbox_duration = _histogram(
        "inbox.process.duration", "s", "Claim, body and completion of one delivery"
    )
    dead_letters = _counter("dead_letter.count", "{message}", "Messages dead-lettered, by reason")
    lock_failures = _counter(
        "lock.acquisition.failure", "{lock}", "Maintenance locks another instance held"
    )
    locks_lost = _counter("lock.lost", "{lock}", "Locks lost while their work ran")
    breaker_transitions = _counter(
        "circuit_breaker.transitions", "{transition}", "Circuit breaker state changes"
    )
    manual_retries = _counter(
        "manual.retry.count", "{row}", "Poisoned rows an operator sent again, by kind"
    )
    receive_lag = _histogram(
        "receive.lag", "s", "From publishing (or outbox commit) to the worker receiving it"
    )
    process_lag = _histogram(
        "process.lag", "s", "From publishing (or outbox commit) to the task starting"
    )

    def __init__(
        self,
        app_name: str | None,
        *,
        outbox_stats: Callable[[], OutboxStats],
        inbox_stats: Callable[[], Mapping[str, int]],
        dead_letter_depth: Callable[[], int],
    ) -> None:
        """The three queries feed the gauges, in the SDK's collection thread (never a task's).

        They are callables because what answers them (admin, dead letters) records into
        these metrics itself, so it is built after them.
        """
        self.app_name = app_name  # the gauges' "app" attribute
        self._outbox_stats = outbox_stats
        self._inbox_stats = inbox_stats
        self._dead_letter_depth = dead_letter_depth
        meter = otel_metrics.get_meter(METER) if otel_metrics is not None else None
        for row in self.instruments():
            self.__dict__[row.attribute] = row.create(meter)
        self._gauge_values: dict[str, float] = {}
        self._gauges_at = 0.0
        self._gauge_lock = threading.Lock()
        _LIVE.add(self)
        if meter is not None:
            _register_gauges(meter)

    @classmethod
    def instruments(cls) -> list[Instrument[Any]]:
        """The rows of the instrument table, in declaration order."""
        return [row for row in vars(cls).values() if isinstance(row, Instrument)]

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
        stats = self._outbox_stats()
        age = stats.oldest_due_age
        return {
            "outbox.pending": float(stats.due),
            "outbox.oldest_age": 0.0 if age is None else age.total_seconds(),
            "dead_letter.depth": float(self._dead_letter_depth()),
            "outbox.poisoned": float(stats.poisoned),
            "inbox.poisoned": float(self._inbox_stats()["poisoned"]),
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
