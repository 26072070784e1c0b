"""Catch a body that commits (or ends) the Session of ``self.transaction()`` itself.

The Session's one commit, when the body returns, carries the completion mark. A habitual
``session.commit()`` in the block would commit the writes without the mark: the run would
then fail to complete, be retried, and commit the same writes again on every retry. So
the Session refuses any commit but the pipeline's own (a ``before_commit`` listener
raises ``TransactionMisuse`` before anything is written), and a transaction ended some
other way (``rollback()``, ``close()``) is refused at the block's end and again at the
commit. Either way the run is dead-lettered at once, never retried.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import event
from sqlalchemy.orm import Session, SessionTransaction

from celery_reliable.exceptions import TransactionMisuse

_COMMITTED = (
    "session.commit() on the Session of self.transaction(): its commit when the task "
    "returns carries the completion mark, so the task must not commit on its own (nothing "
    "was committed; the message is dead-lettered instead of retried)"
)
_ENDED = (
    "the transaction of self.transaction() was ended by the task (rollback() or close()); "
    "its commit when the task returns carries the completion mark"
)


class CommitGuard:
    """Watches one Session of ``self.transaction()``."""

    def __init__(self, session: Session, transaction: SessionTransaction) -> None:
        self.session = session
        self.transaction = transaction
        self.misused = False
        self._ours = False
        event.listen(session, "before_commit", self._before_commit)

    def _before_commit(self, session: Any) -> None:
        if not self._ours:
            self.misused = True
            raise TransactionMisuse(_COMMITTED)

    def check(self) -> None:
        """Raise TransactionMisuse if the block committed or ended the transaction."""
        if self.misused:
            raise TransactionMisuse(_COMMITTED)
        if self.session.get_transaction() is not self.transaction:
            raise TransactionMisuse(_ENDED)

    def allow(self) -> None:
        """The pipeline's own commit follows."""
        self._ours = True
