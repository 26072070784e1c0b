"""DeadLettered crosses the result backend as Celery stores exceptions, keeping both types."""

from __future__ import annotations

import pickle

import pytest
from celery import Celery
from celery.exceptions import Ignore, Reject, Retry

from celery_reliable import DeadLettered


class ExpectedError(Exception):
    """A user's exception type, defined in a module the caller has imported."""


class Outer:
    class Inner(Exception):
        """A nested exception class: its qualified name has a dot."""


@pytest.fixture(scope="module")
def backend():  # type: ignore[no-untyped-def]
    return Celery("dead-lettered", backend="cache+memory://").backend


ORIGINALS = [
    ValueError("bad value"),
    KeyError("k"),
    OSError(5, "input/output error"),
    UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"),
    ExpectedError("declined"),
    Outer.Inner("nested"),
]


@pytest.mark.parametrize("original", ORIGINALS, ids=lambda e: type(e).__qualname__)
@pytest.mark.parametrize("serializer", ["json", "pickle"])
def test_the_caller_gets_both_types_back(backend, original, serializer) -> None:  # type: ignore[no-untyped-def]
    raised = DeadLettered.of("MaxRetriesExceeded", 42, original)
    stored = backend.prepare_exception(raised, serializer)
    if serializer == "pickle":
        stored = pickle.loads(pickle.dumps(stored))
    back = backend.exception_to_python(stored)
    assert isinstance(back, DeadLettered)
    assert isinstance(back, type(original))
    assert (back.reason, back.entry_id) == ("MaxRetriesExceeded", 42)
    assert back.exc_type == type(original).__qualname__
    assert back.exc_message == str(original)
    assert str(back).startswith("dead-lettered as MaxRetriesExceeded (entry 42)")


def test_an_original_type_the_caller_has_not_loaded_gives_plain_dead_lettered(backend) -> None:  # type: ignore[no-untyped-def]
    stored = backend.prepare_exception(DeadLettered.of("PoisonMessage", 3, ValueError("x")), "json")
    stored["exc_type"] = "DeadLettered[no/such/module:Gone]"
    back = backend.exception_to_python(stored)
    assert type(back) is DeadLettered
    assert (back.reason, back.entry_id, back.exc_type) == ("PoisonMessage", 3, "ValueError")


def test_exceptions_outside_exception_are_not_mixed_in() -> None:
    raised = DeadLettered.of("PoisonMessage", 1, KeyboardInterrupt())
    assert type(raised) is DeadLettered
    assert not isinstance(raised, KeyboardInterrupt)


def test_without_an_exception_the_detail_is_the_message() -> None:
    raised = DeadLettered.of("CircuitBreakerOpen", 9, None, "circuit breaker 'pay' is open")
    assert type(raised) is DeadLettered
    assert (
        str(raised)
        == "dead-lettered as CircuitBreakerOpen (entry 9): circuit breaker 'pay' is open"
    )


def test_the_module_refuses_names_that_are_not_derived_classes() -> None:
    import celery_reliable.dead_lettered as module

    with pytest.raises(AttributeError):
        module.__getattr__("system")


@pytest.mark.parametrize("control", [Reject("no", requeue=False), Ignore(), Retry("again")])
def test_celerys_control_flow_is_a_base_for_the_caller_only(backend, control):
    """The worker would obey a Reject it raised; plain Celery's caller catches one."""
    failure = DeadLettered.of("ManualRejection", 3, control)
    assert not isinstance(failure, type(control))  # what the worker raises
    assert (failure.exc_type, failure.entry_id) == (type(control).__qualname__, 3)
    back = backend.exception_to_python(backend.prepare_exception(failure, "json"))
    assert isinstance(back, type(control))  # what the caller's .get() raises
    assert isinstance(back, DeadLettered)
    assert (back.reason, back.entry_id) == ("ManualRejection", 3)
