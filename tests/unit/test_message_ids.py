import pytest

from celery_reliable import InvalidMessageId
from celery_reliable.message import MESSAGE_ID_HEADER, message_id_from


def test_task_id_is_the_default_message_id():
    assert message_id_from("abc", {}) == "abc"
    assert message_id_from("abc", None) == "abc"


def test_header_overrides_the_task_id():
    assert message_id_from("abc", {MESSAGE_ID_HEADER: "order-42-charge"}) == "order-42-charge"


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("", "empty"),
        ("x" * 256, "256 characters"),
        (42, "string"),
        (None, "string"),
        (" order-1", "white space"),
        ("order-1\n", "white space"),
    ],
)
def test_bad_header_values_are_refused_with_the_reason(value, why):
    with pytest.raises(InvalidMessageId, match=why):
        message_id_from("abc", {MESSAGE_ID_HEADER: value})


def test_longest_allowed_id():
    assert message_id_from("abc", {MESSAGE_ID_HEADER: "x" * 255}) == "x" * 255
