"""DeadLettered crosses the result backend as Celery stores exceptions, keeping both types."""

from __future__ import annotations

import json
import pickle

import pytest
from celery import Celery
from celery.exceptions import Ignore, Reject, Retry

from celery_reliable import DeadLettered


class ExpectedError(Exception):
    """A user's exception type, defined in a module the caller has imported."""


class ComparedError(Exception):
    """Compares by type and args, as Celery's own test suite's ExpectedException does."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ComparedError) and self.args == other.args

    def __hash__(self) -> int:
        return hash(self.args)


class CodedError(Exception):
    """Keeps an argument as an attribute, as many users' exceptions do."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message, code)
        self.code = code


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
    CodedError("declined", 402),
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
    assert back.args == original.args
    assert (back.reason, back.entry_id) == ("MaxRetriesExceeded", 42)
    assert back.exc_type == type(original).__qualname__
    assert back.exc_message == str(original)
    assert str(back).startswith("dead-lettered as MaxRetriesExceeded (entry 42)")


@pytest.mark.parametrize("where", ["worker", "caller"])
def test_it_compares_as_the_original_does(backend, where) -> None:  # type: ignore[no-untyped-def]
    """Celery's suite asserts ``result.get(propagate=False) == ExpectedException(...)``."""
    dead = DeadLettered.of("UnhandledException", 5, ComparedError("expected to fail", "x"))
    if where == "caller":
        dead = backend.exception_to_python(backend.prepare_exception(dead, "json"))
    assert dead == ComparedError("expected to fail", "x")
    assert ComparedError("expected to fail", "x") == dead
    assert dead != ComparedError("expected to fail", "y")
    assert (dead.reason, dead.entry_id) == ("UnhandledException", 5)


def test_the_originals_attributes_are_kept(backend) -> None:  # type: ignore[no-untyped-def]
    original = CodedError("declined", 402)
    original.add_note("card ends 4242")
    dead = DeadLettered.of("UnhandledException", 5, original)
    assert (dead.code, dead.__notes__) == (402, ["card ends 4242"])
    back = backend.exception_to_python(backend.prepare_exception(dead, "json"))
    assert back.code == 402  # set again by the original's __init__ on the caller's side


def test_the_dead_letters_fields_win_over_the_originals() -> None:
    """UnicodeError has a ``reason`` of its own; the message is still the original's."""
    original = UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")
    dead = DeadLettered.of("PoisonMessage", 2, original)
    assert (dead.reason, dead.exc_message) == ("PoisonMessage", str(original))
    assert dead.args[-1] == "invalid start byte"


def test_str_and_repr_say_what_it_is() -> None:
    dead = DeadLettered.of("UnhandledException", 5, ComparedError("expected to fail", "x"))
    assert str(dead) == (
        "dead-lettered as UnhandledException (entry 5): ComparedError: ('expected to fail', 'x')"
    )
    assert repr(dead) == (
        "DeadLettered(reason='UnhandledException', entry_id=5, "
        "exc=ComparedError('expected to fail', 'x'))"
    )


@pytest.mark.parametrize("original", [ComparedError("expected to fail", 1), None])
def test_what_a_quarantine_keeps_raises_the_same_again(original) -> None:  # type: ignore[no-untyped-def]
    dead = DeadLettered.of("UnhandledException", 5, original, None if original else "poison")
    again = DeadLettered.restored(json.loads(json.dumps(dead.stored())))
    assert again is not None
    assert (type(again).__qualname__, again.args) == (type(dead).__qualname__, dead.args)
    assert (again.reason, again.entry_id, again.exc_message) == (
        dead.reason,
        dead.entry_id,
        dead.exc_message,
    )
    if original is not None:
        assert again == original


@pytest.mark.parametrize("stored", [None, "text", {"exc_type": "os.system", "exc_message": []}])
def test_anything_else_restores_nothing(stored) -> None:  # type: ignore[no-untyped-def]
    assert DeadLettered.restored(stored) is None


def test_an_original_type_the_caller_has_not_loaded_gives_plain_dead_lettered(backend) -> None:  # type: ignore[no-untyped-def]
    stored = backend.prepare_exception(DeadLettered.of("PoisonMessage", 3, ValueError("x")), "json")
    stored["exc_type"] = "DeadLettered[no/such/module:Gone|PoisonMessage|3]"
    back = backend.exception_to_python(stored)
    assert type(back) is DeadLettered
    assert (back.reason, back.entry_id, back.exc_type) == ("PoisonMessage", 3, "Gone")
    assert back.exc_message == "x"


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
    copied = pickle.loads(pickle.dumps(failure))  # to the prefork pool's parent process
    assert isinstance(copied, DeadLettered)
    assert not isinstance(copied, type(control))
    again = DeadLettered.restored(failure.stored())  # what a quarantined copy raises
    assert isinstance(again, DeadLettered)
    assert not isinstance(again, type(control))
