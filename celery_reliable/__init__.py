"""celery_reliable: exactly-once effects for Celery tasks.

Public names only; everything else is internal and may change.
"""

from .exceptions import (
    ConfigurationError,
    EnqueueError,
    InvalidMessageId,
    LostOwnership,
    MessagePoisoned,
    ReliableError,
    StoreUnavailable,
    TransactionMisuse,
)
from .extension import Reliable
from .message import MESSAGE_ID_HEADER
from .states import DUPLICATE
from .task import ReliableTask

__version__ = "0.1.0.dev0"

__all__ = [
    "DUPLICATE",
    "MESSAGE_ID_HEADER",
    "ConfigurationError",
    "EnqueueError",
    "InvalidMessageId",
    "LostOwnership",
    "MessagePoisoned",
    "Reliable",
    "ReliableError",
    "ReliableTask",
    "StoreUnavailable",
    "TransactionMisuse",
]
