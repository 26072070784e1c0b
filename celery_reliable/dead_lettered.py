"""``DeadLettered``: what a caller's ``.get()`` raises for a message that was dead-lettered.

A dead-lettered task ends as a Celery ``FAILURE`` whose exception is a ``DeadLettered``, so
``.get()``, ``.failed()``, errbacks, chains and chords see a failure exactly as Celery
reports one. Code written for plain Celery catches the body's own exception type
(``except ValueError``, ``pytest.raises(ExpectedException)``), so the exception is also an
instance of that type: ``DeadLettered.of(...)`` builds a class that derives from both.

The result backend stores an exception as its class's module and qualified name plus its
arguments, and the caller's Celery rebuilds it with ``getattr`` on a module already
imported (never importing one). The derived classes are named ``DeadLettered[module:Name]``
(dots written as ``/``, since Celery splits the name on dots) and this module's
``__getattr__`` rebuilds them on the caller's side. When the original type is not loaded
there, the caller gets a plain ``DeadLettered``: the reason, entry id, type and message
are still all in it.
"""

from __future__ import annotations

import sys
from typing import Any

from celery.exceptions import TaskPredicate

from .exceptions import ReliableError

_PREFIX = "DeadLettered["
#: Derived classes by (original type, for the caller): one class each, so isinstance agrees.
_DERIVED: dict[tuple[type[BaseException], bool], type[DeadLettered]] = {}


class DeadLettered(ReliableError):
    """The message failed for good and was stored as a dead letter.

    ``reason`` is the ``DeadLetterReason`` value, ``entry_id`` the dead-letter entry (replay
    it with ``celery reliable dlq replay ID``; None when the store kept no new entry, for a
    copy of a message that was already dead-lettered), ``exc_type`` and ``exc_message`` the
    original exception's qualified type name and message, when there was one.
    """

    def __init__(
        self,
        reason: str = "UnhandledException",
        entry_id: int | None = None,
        exc_type: str | None = None,
        exc_message: str | None = None,
    ) -> None:
        # BaseException directly: in a derived class the next __init__ in the MRO is the
        # original exception's, whose signature is not ours.
        Exception.__init__(self, reason, entry_id, exc_type, exc_message)
        self.reason = reason
        self.entry_id = entry_id
        self.exc_type = exc_type
        self.exc_message = exc_message

    def __str__(self) -> str:
        entry = f"entry {self.entry_id}" if self.entry_id is not None else "no new entry"
        cause = f": {self.exc_type}: {self.exc_message}" if self.exc_type else ""
        if not self.exc_type and self.exc_message:
            cause = f": {self.exc_message}"
        return f"dead-lettered as {self.reason} ({entry}){cause}"

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self).__name__, self.args))

    @classmethod
    def of(
        cls,
        reason: str,
        entry_id: int | None,
        exc: BaseException | None,
        detail: str | None = None,
    ) -> DeadLettered:
        """The exception for a dead letter of ``exc`` (or of ``detail`` when nothing raised)."""
        if exc is None:
            return cls(reason, entry_id, None, detail)
        original = type(exc)
        exc_type = original.__qualname__
        return _derived(original)(reason, entry_id, exc_type, str(exc))


def _rebuild(name: str, args: tuple[Any, ...]) -> DeadLettered:
    found = __getattr__(name) if name.startswith(_PREFIX) else DeadLettered
    return found(*args)


def _name_of(original: type[BaseException]) -> str:
    module, qualname = original.__module__, original.__qualname__
    return f"{_PREFIX}{module.replace('.', '/')}:{qualname.replace('.', '/')}]"


def _derived(original: type[BaseException], *, caller: bool = False) -> type[DeadLettered]:
    found = _DERIVED.get((original, caller))
    if found is None:
        found = _DERIVED.setdefault((original, caller), _derive(original, caller))
    return found


def _derive(original: type[BaseException], caller: bool) -> type[DeadLettered]:
    """A DeadLettered that is also an ``original``; DeadLettered itself when none can be made.

    Some exception types cannot be a second base (an incompatible C layout), and exceptions
    outside ``Exception`` (KeyboardInterrupt, SystemExit) must not be caught as such.
    Celery's control flow (``Reject``, ``Ignore``, ``Retry``) would be obeyed by the worker
    instead of failing the task, so there the class only bears the name; the caller, who
    rebuilds it from that name (``__getattr__``), gets the real base: plain Celery's caller
    catches ``Reject`` from ``.get()`` of a task that rejected itself.
    """
    if not issubclass(original, Exception) or issubclass(original, DeadLettered):
        return DeadLettered
    bases: tuple[type, ...] = (DeadLettered, original)
    if issubclass(original, TaskPredicate) and not caller:
        bases = (DeadLettered,)
    name = _name_of(original)
    try:
        derived = type(name, bases, {"__module__": __name__})
        derived("probe", None, None, None)  # e.g. an original whose __new__ needs other args
    except Exception:
        return DeadLettered
    derived.__qualname__ = name
    return derived


def __getattr__(name: str) -> type[DeadLettered]:
    """Rebuild ``DeadLettered[module:Name]`` on the caller's side (see the module docstring)."""
    if not (name.startswith(_PREFIX) and name.endswith("]")):
        raise AttributeError(name)
    module_name, _, qualname = name[len(_PREFIX) : -1].partition(":")
    found: Any = sys.modules.get(module_name.replace("/", "."))
    for part in qualname.split("/"):
        found = getattr(found, part, None)
    if isinstance(found, type) and issubclass(found, BaseException):
        return _derived(found, caller=True)
    return DeadLettered
