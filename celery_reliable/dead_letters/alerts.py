"""The dead-letter alert: an ERROR log and a signal when dead letters come in a storm."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from celery import Celery

from celery_reliable.clock import utcnow
from celery_reliable.settings import Settings
from celery_reliable.signals import dead_letter_alert

from .types import DeadLetterFilter

logger = logging.getLogger(__name__)


class Alerts:
    """Counts recent dead letters against ``reliable_alert_threshold``; one alert a window.

    One alert per window per process, so a storm is reported, not repeated for every
    message of it.
    """

    def __init__(
        self, app: Celery, settings: Settings, count: Callable[[DeadLetterFilter], int]
    ) -> None:
        self._app = app
        self._settings = settings
        self._count = count
        self._lock = threading.Lock()
        self._last_alert = 0.0

    def check(self) -> bool:
        """Alert (ERROR log + signal) when dead letters in the window exceed the threshold."""
        window, threshold = self._settings.alert_window, self._settings.alert_threshold
        with self._lock:
            if time.monotonic() - self._last_alert < window.total_seconds():
                return False
            recent = self._count(DeadLetterFilter(since=utcnow() - window))
            if recent <= threshold:
                return False
            self._last_alert = time.monotonic()
        logger.error(
            "%d messages were dead-lettered in the last %s (reliable_alert_threshold is %d)",
            recent,
            window,
            threshold,
        )
        dead_letter_alert.send(sender=self._app, count=recent, window=window, threshold=threshold)
        return True
