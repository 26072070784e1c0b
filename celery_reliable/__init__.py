"""celery_reliable: exactly-once effects for Celery tasks.

Public names only; everything else is internal and may change.
"""

from .dead_lettered import DeadLettered
from .dead_letters import DeadLetter, DeadLetterReason
from .exceptions import (
    ConfigurationError,
    DeadLetterNotFound,
    EnqueueError,
    InvalidArgument,
    InvalidMessageId,
    LostOwnership,
    PermanentFailure,
    ReliableError,
    StoreUnavailable,
    TransactionMisuse,
)
from .extension import Reliable
from .message import MESSAGE_ID_HEADER
from .poison import FailureContext, Verdict
from .retry import RetryPolicy
from .states import DEAD_LETTERED, DUPLICATE
from .task import ReliableTask

__version__ = "0.1.0.dev0"

__all__ = [
    "DEAD_LETTERED",
    "DUPLICATE",
    "MESSAGE_ID_HEADER",
    "ConfigurationError",
    "DeadLetter",
    "DeadLetterNotFound",
    "DeadLetterReason",
    "DeadLettered",
    "EnqueueError",
    "FailureContext",
    "InvalidArgument",
    "InvalidMessageId",
    "LostOwnership",
    "PermanentFailure",
    "Reliable",
    "ReliableError",
    "ReliableTask",
    "RetryPolicy",
    "StoreUnavailable",
    "TransactionMisuse",
    "Verdict",
]
