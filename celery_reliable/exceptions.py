"""The exceptions of celery_reliable: one root, each docstring its default message."""

from __future__ import annotations


class ReliableError(Exception):
    """A celery_reliable operation failed."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class ConfigurationError(ReliableError, ValueError):
    """The celery_reliable configuration is invalid."""


class InvalidMessageId(ReliableError, ValueError):
    """The message id is not a non-empty string of at most 255 characters."""


class TransactionMisuse(ReliableError, RuntimeError):
    """self.transaction() was used outside a task run, or entered twice in one run."""


class LostOwnership(ReliableError):
    """Another delivery took this message over; this run's writes were rolled back.

    Raised when the version-fenced completion mark matches no row: the claim this run held
    was superseded (for example a stale lease was reclaimed), so committing would double
    the effect. The message is still owned by the other delivery, so nothing is lost.
    """


class StoreUnavailable(ReliableError):
    """The reliable store could not be reached or failed transiently; the message is deferred."""


class ClaimUncertain(StoreUnavailable):
    """The store failed while a claim was being written: it may or may not have committed.

    ``version`` is what the claim holds if it did. The deferred copy of the message carries
    it, so it can take that claim over at once instead of waiting out the lease (the claim
    looks like a live run's). Should the claim not have committed and another delivery hold
    that version, fencing lets only one of the two runs commit: the effect stays single.
    """

    def __init__(self, message: str, *, version: int) -> None:
        super().__init__(message)
        self.version = version


class EnqueueError(ReliableError, ValueError):
    """The message cannot be put in the outbox; nothing was written."""


class InvalidArgument(ReliableError, ValueError):
    """An argument given to a celery_reliable API is invalid."""


class DeadLetterNotFound(ReliableError, LookupError):
    """There is no dead-letter entry with that id."""


class PermanentFailure(ReliableError):
    """Raised by a task body: this message can never succeed; dead-letter it now, no retry.

    ``reason`` is the DeadLetterReason recorded (``ValidationFailed``, ``AuthorizationFailed``,
    ... default ``PoisonMessage``).
    """

    def __init__(self, message: str | None = None, *, reason: str = "PoisonMessage") -> None:
        super().__init__(message)
        self.reason = reason


class LockLost(ReliableError):
    """A distributed lock was lost while its work ran; that work stops."""
