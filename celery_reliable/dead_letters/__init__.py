"""The dead-letter store: messages that failed for good, kept whole for review and replay.

``types`` holds the values other modules use (reasons, a failed message, an entry, a
filter), ``api`` the service behind ``reliable.dead_letters``, ``replay`` its replay
engine, ``alerts`` the storm alert and ``fitting`` how an entry becomes a storable row. The
rows themselves are kept behind ``celery_reliable.store.dead_letter_rows``.
"""

from celery_reliable.sanitize import storable

from .api import DeadLetters
from .fitting import fit_entry
from .types import (
    DeadLetter,
    DeadLetterFilter,
    DeadLetterReason,
    DeadLetterStatistics,
    FailedMessage,
    Redactor,
    Transform,
    reason_of,
    require_count,
)

__all__ = [
    "DeadLetter",
    "DeadLetterFilter",
    "DeadLetterReason",
    "DeadLetterStatistics",
    "DeadLetters",
    "FailedMessage",
    "Redactor",
    "Transform",
    "fit_entry",
    "reason_of",
    "require_count",
    "storable",
]
