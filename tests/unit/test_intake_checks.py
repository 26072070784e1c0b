"""The checks that keep malformed input from crashing the worker, the CLI or the store."""

from __future__ import annotations

from datetime import timedelta
from types import SimpleNamespace

import pytest

from celery_reliable.dead_letters import storable
from celery_reliable.durations import ago, parse_moment
from celery_reliable.intake_messages import raw_body, task_message_problem

GOOD = [["a"], {}, {"callbacks": None}]


def message(payload, **headers):
    return SimpleNamespace(payload=payload, headers={"task": "t", "id": "i", **headers})


@pytest.mark.parametrize(
    ("payload", "headers"),
    [
        (GOOD, {}),
        ([[], {}, None], {}),
        (GOOD, {"timelimit": [1, None]}),
        (GOOD, {"timelimit": None}),
        (GOOD, {"timelimit": []}),  # Celery ignores an empty one
        (GOOD, {"eta": "2030-01-01T00:00:00+00:00"}),
        ({"args": [1], "kwargs": {}}, {}),  # a "hybrid" body
    ],
)
def test_what_celery_can_run_passes(payload, headers):
    assert task_message_problem(message(payload, **headers), None) is None


@pytest.mark.parametrize(
    ("payload", "headers", "says"),
    [
        (GOOD, {"id": None}, "task id"),
        (GOOD, {"id": 5}, "task id"),
        (GOOD, {"id": ""}, "task id"),
        (b"raw", {}, "not [args, kwargs, embed] but bytes"),
        ([[], {}], {}, "not [args, kwargs, embed]"),
        ({"hello": 1}, {}, "but dict"),  # a dict without "args" is not a hybrid body
        ([5, {}, None], {}, "arguments must be a list"),
        ([[], [], None], {}, "keyword arguments"),
        ([[], {1: 2}, None], {}, "keyword arguments"),
        ([[], {}, [1]], {}, "embed"),
        (GOOD, {"timelimit": "ab"}, "timelimit"),
        (GOOD, {"timelimit": [-1, None]}, "timelimit"),
        (GOOD, {"timelimit": [float("nan"), None]}, "timelimit"),
        (GOOD, {"timelimit": [True, None]}, "timelimit"),
        (GOOD, {"eta": "tomorrow"}, "eta"),
        (GOOD, {"eta": "9999-12-31T23:59:59-12:00"}, "eta"),
    ],
)
def test_what_would_break_celery_is_named(payload, headers, says):
    problem = task_message_problem(message(payload, **headers), None)
    assert problem is not None
    assert says in problem


def test_a_protocol_1_body_has_its_fields_in_the_body():
    body = {"task": "t", "id": "i", "args": [], "kwargs": {}}
    assert task_message_problem(message(None), body) is None
    assert "task id" in task_message_problem(message(None), {**body, "id": 3})


@pytest.mark.parametrize(
    ("value", "length", "stored"),
    [
        ("plain", None, "plain"),
        ("caf\u00e9", None, "caf\u00e9"),
        ("a\x00b", None, "a\\x00b"),
        ("a\ud800b", None, "a\\ud800b"),
        ("\x00" * 10, 8, "\\x00\\x00"),  # cut after escaping: it fits its column
        (None, 5, None),
    ],
)
def test_text_is_made_storable(value, length, stored):
    assert storable(value, length) == stored


def test_a_body_decoded_by_py_amqp_is_kept_as_it_was_published():
    latin = SimpleNamespace(body="\u00ff\u00fe", content_encoding="latin-1")
    assert raw_body(latin) == b"\xff\xfe"
    unknown = SimpleNamespace(body="x", content_encoding="no-such-codec")
    assert raw_body(unknown) == b"x"
    assert raw_body(SimpleNamespace(body=b"\x80", content_encoding="utf-8")) == b"\x80"


@pytest.mark.parametrize(
    "value", ["1000000d", "0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-12:00"]
)
def test_moments_outside_the_calendar_are_value_errors(value):
    with pytest.raises(ValueError, match="year"):
        parse_moment(value)


def test_an_age_before_the_year_1_is_a_value_error():
    assert ago(timedelta(days=1)) < ago(timedelta(seconds=1))
    with pytest.raises(ValueError, match="before the year 1"):
        ago(timedelta(days=999_999_999))
