"""Signals of celery_reliable, in Celery's own signal style (``signal.connect(handler)``)."""

from __future__ import annotations

from celery.utils.dispatch import Signal

#: More than ``reliable_alert_threshold`` dead letters within ``reliable_alert_window``.
#: Sent with ``sender`` = the Celery app and ``count``, ``window``, ``threshold``.
dead_letter_alert = Signal(
    name="dead_letter_alert", providing_args={"count", "window", "threshold"}
)
