"""The identity of a message as the inbox sees it.

The message id is the Celery task id, unless the sender set the ``reliable_message_id``
header to a business key (``order-42-charge``) so that two sends of the same business
action count as one message.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .exceptions import InvalidMessageId
from .store.tables import KEY_LENGTH

MESSAGE_ID_HEADER = "reliable_message_id"
#: Set on a copy a delivery re-published: the claim version its run abandoned.
RESUMES_HEADER = "reliable_resumes_version"
#: With RESUMES_HEADER, when that claim never ran the body (its answer was lost): the copy
#: takes it over without counting another attempt.
RESUMES_UNRUN_HEADER = "reliable_resumes_unrun"
#: Set on a copy re-published by a delivery the broker flagged redelivered (or that carried
#: this header): the copy is judged as flagged too, so a dead run's claim is still taken
#: over once its lease stops being renewed, not only after ``reliable_stuck_threshold``.
REDELIVERED_HEADER = "reliable_redelivered"
#: How many times a message was deferred (waiting for a live delivery or the store).
DEFERRALS_HEADER = "reliable_deferrals"
#: When the message was published, or is due (epoch seconds): the lag metrics start here.
SENT_AT_HEADER = "reliable_sent_at"


def redelivered(delivery_info: Mapping[str, Any] | None, headers: Mapping[str, Any] | None) -> bool:
    """Whether the broker flagged this delivery redelivered, or an earlier one of its copy."""
    return bool((delivery_info or {}).get("redelivered")) or (
        (headers or {}).get(REDELIVERED_HEADER) is True
    )


def validate_message_id(value: object, *, source: str = "message id") -> str:
    """Return ``value`` if it can identify a message; raise InvalidMessageId saying why not.

    Surrounding white space is refused because MySQL compares keys ignoring trailing blanks:
    ``"a"`` and ``"a "`` would be one message there and two elsewhere.
    """
    if not isinstance(value, str):
        raise InvalidMessageId(f"{source} must be a string, got {type(value).__name__}: {value!r}")
    if not value:
        raise InvalidMessageId(f"{source} must not be empty")
    if len(value) > KEY_LENGTH:
        raise InvalidMessageId(f"{source} is {len(value)} characters long; at most {KEY_LENGTH}")
    if value != value.strip():
        raise InvalidMessageId(f"{source} {value!r} must not start or end with white space")
    return value


def message_id_from(
    task_id: str | None, headers: Mapping[str, Any] | None, *, replaced_nesting: object = 0
) -> str:
    """The message id of a delivery: the header if the sender set one, else the task id.

    A task's ``replace()`` sends its replacement under the same task id (Celery's results
    follow it) with ``replaced_task_nesting`` > 0: that is a new message, so its id carries
    the nesting, or the inbox would take it for the replaced run.
    """
    if headers and MESSAGE_ID_HEADER in headers:
        return validate_message_id(
            headers[MESSAGE_ID_HEADER], source=f"header {MESSAGE_ID_HEADER!r}"
        )
    message_id = validate_message_id(task_id, source="task id")
    if isinstance(replaced_nesting, int) and replaced_nesting > 0:
        return validate_message_id(f"{message_id}:replaced-{replaced_nesting}")
    return message_id
