"""``DeadLettered``: what a caller's ``.get()`` raises for a message that was dead-lettered.

A dead-lettered task ends as a Celery ``FAILURE`` whose exception is a ``DeadLettered``, so
``.get()``, ``.failed()``, errbacks, chains and chords see a failure exactly as Celery
reports one. Code written for plain Celery catches, inspects and compares the body's own
exception (``except ValueError``, ``exc.args[0]``, ``assert exc == ExpectedException(...)``),
so the dead letter of an exception is also that exception: ``DeadLettered.of(...)`` builds a
class deriving from both, whose ``args`` (and the attributes the original's ``__init__``
sets) are the original's. The dead letter's own fields (``reason``, ``entry_id``,
``exc_type``, ``exc_message``) are attributes; where the original has one of those names
(UnicodeError's ``reason``), the dead letter's wins and the original's stays in ``args``.
A ``DeadLettered`` without an original exception (a poison verdict, a circuit breaker)
keeps its fields as its ``args``.

The result backend stores an exception as its class's module and qualified name plus its
``args``, and the caller's Celery rebuilds it as ``cls(*args)``, the class found with
``getattr`` on a module already imported (never importing one). The original's arguments
fill ``args``, so the reason and entry id travel in the class's name:
``DeadLettered[module:Name|reason|entry id]`` (dots written as ``/``, since Celery splits the
name on dots). Each dead letter is an instance of a class of its own, named so, deriving from
one class per original type (``isinstance`` agrees across dead letters); this module's
``__getattr__`` rebuilds such a class on the caller's side. When the original type is not
loaded there, the caller gets a plain ``DeadLettered``: the reason, entry id, type and
message are still all in it.
"""

from __future__ import annotations

import sys
from contextlib import suppress
from typing import Any, ClassVar

from celery.exceptions import TaskPredicate
from celery.utils.serialization import ensure_serializable
from kombu.utils import json as kombu_json

from .exceptions import ReliableError

_PREFIX = "DeadLettered["
_LABEL = "|"
#: The attributes of the dead letter itself, which a copied original attribute never replaces.
_FIELDS = ("reason", "entry_id", "exc_type", "exc_message")


class DeadLettered(ReliableError):
    """The message failed for good and was stored as a dead letter.

    ``reason`` is the ``DeadLetterReason`` value, ``entry_id`` the dead-letter entry (replay
    it with ``celery reliable dlq replay ID``; None when the store kept no new entry),
    ``exc_type`` and ``exc_message`` the original exception's qualified type name and
    message, when there was one.
    """

    def __init__(
        self,
        reason: str = "UnhandledException",
        entry_id: int | None = None,
        exc_type: str | None = None,
        exc_message: str | None = None,
    ) -> None:
        # Exception directly: the arguments are the dead letter's, not a message.
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
        return (_rebuild, (type(self).__qualname__, self.args))

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
        kind = _kind(original)
        if kind is not None:
            try:
                dead = _labelled(kind, _where(original), reason, entry_id)(*exc.args)
            except Exception:  # an original whose __new__ does not take its own args
                pass
            else:
                copied = {name: value for name, value in vars(exc).items() if name not in _FIELDS}
                vars(dead).update(copied)  # what was set on it after its __init__, too
                dead.exc_message = str(exc)
                return dead
        return cls(reason, entry_id, original.__qualname__, str(exc))

    def stored(self) -> dict[str, Any]:
        """What a quarantined claim keeps, so that its later copies raise this again.

        Celery's own form (class name and JSON-safe arguments, as the result backend stores
        it): :meth:`restored` rebuilds it as the caller's ``.get()`` would.
        """
        args = ensure_serializable(self.args, kombu_json.dumps)
        return {"exc_type": type(self).__qualname__, "exc_message": list(args)}

    @staticmethod
    def restored(stored: Any) -> DeadLettered | None:
        """The dead letter :meth:`stored` kept, for the worker to raise again; None when
        ``stored`` is not such a value."""
        if not isinstance(stored, dict):
            return None
        name, args = stored.get("exc_type"), stored.get("exc_message")
        if not isinstance(name, str) or not isinstance(args, list):
            return None
        try:
            return _rebuild(name, tuple(args), caller=False)
        except Exception:  # a value of another version, or an original that refuses its args
            return None


class _Derived(DeadLettered):
    """The dead letter of an ``_original`` exception, which it is too (see the module doc).

    One subclass per original type (its *kind*), and under it one class per dead letter,
    whose ``_label`` is its reason and entry id. Built by ``cls(*args)`` with the original's
    arguments, as Celery's caller rebuilds any exception.
    """

    _original: ClassVar[type[BaseException]]
    _label: ClassVar[tuple[str, int | None]]

    def __init__(self, *args: Any) -> None:
        original = self._original
        if isinstance(self, original):
            # The attributes the original sets (OSError's errno, a user's own fields); it can
            # refuse arguments the JSON backend turned into strings.
            with suppress(Exception):
                original.__init__(self, *args)
        self.args = args
        # Read first: an original's own ``reason`` (UnicodeError's) gives way to ours.
        self.exc_message = _message(self, original)
        self.reason, self.entry_id = self._label
        self.exc_type = original.__qualname__

    def __reduce__(self) -> tuple[Any, ...]:
        # A worker's dead letter of Celery's control flow does not derive from it (_derive),
        # and a pickled copy does not either: the prefork pool pickles it to its parent
        # process, which would reject the message for a Reject instead of acknowledging it.
        whole = isinstance(self, self._original)
        return (_rebuild, (type(self).__qualname__, self.args, whole))

    def __repr__(self) -> str:
        shown = ", ".join(map(repr, self.args))
        return (
            f"DeadLettered(reason={self.reason!r}, entry_id={self.entry_id!r}, "
            f"exc={self.exc_type}({shown}))"
        )


class _Unresolved(DeadLettered):
    """A labelled name whose original type the caller has not loaded: a plain DeadLettered.

    ``cls(*args)`` returns a ``DeadLettered`` (not an instance of this class), built from
    the label and the original's arguments.
    """

    _type_name: ClassVar[str]
    _label: ClassVar[tuple[str, int | None]]

    def __new__(cls, *args: Any) -> DeadLettered:  # type: ignore[misc]
        reason, entry_id = cls._label
        return DeadLettered(reason, entry_id, cls._type_name, str(Exception(*args)))


def _rebuild(name: str, args: tuple[Any, ...], caller: bool = True) -> DeadLettered:
    """The dead letter ``name`` labels, from its ``args`` (pickle's way back, and a claim's).

    ``caller``: with Celery's control flow as a base (``_derive``); a pickled worker-side
    copy, and the ending a worker raises again, are without it.
    """
    found = DeadLettered if name == DeadLettered.__qualname__ else _named(name, caller=caller)
    return found(*args)


def _where(original: type[BaseException]) -> str:
    """``module:Qual/Name``, the original type's place, without the dots Celery splits on."""
    module, qualname = original.__module__, original.__qualname__
    return f"{module.replace('.', '/')}:{qualname.replace('.', '/')}"


def _labelled(
    kind: type[DeadLettered], where: str, reason: str, entry_id: int | None, **extra: Any
) -> type[DeadLettered]:
    """The class of one dead letter: named after its original type, reason and entry id."""
    entry = "" if entry_id is None else str(entry_id)
    name = f"{_PREFIX}{where}{_LABEL}{reason}{_LABEL}{entry}]"
    namespace = {"__module__": __name__, "__qualname__": name, "_label": (reason, entry_id)}
    return type(name, (kind,), {**namespace, **extra})


#: The kinds by (original type, built for the caller); None where no kind can be made.
_KINDS: dict[tuple[type[BaseException], bool], type[_Derived] | None] = {}


def _kind(original: type[BaseException], *, caller: bool = False) -> type[_Derived] | None:
    """The one class deriving from DeadLettered and ``original`` (None: none can be made)."""
    key = (original, caller and issubclass(original, TaskPredicate))
    try:
        return _KINDS[key]
    except KeyError:
        return _KINDS.setdefault(key, _derive(*key))


def _derive(original: type[BaseException], caller: bool) -> type[_Derived] | None:
    """A DeadLettered that is also an ``original``; None when none can be made.

    Some exception types cannot be a second base (an incompatible C layout), and exceptions
    outside ``Exception`` (KeyboardInterrupt, SystemExit) must not be caught as such.
    Celery's control flow (``Reject``, ``Ignore``, ``Retry``) would be obeyed by the worker
    instead of failing the task, so there the class only bears the name; the caller, who
    rebuilds it from that name (``__getattr__``), gets the real base: plain Celery's caller
    catches ``Reject`` from ``.get()`` of a task that rejected itself.
    """
    if not issubclass(original, Exception) or issubclass(original, DeadLettered):
        return None
    bases: tuple[type, ...] = (_Derived, original)
    if issubclass(original, TaskPredicate) and not caller:
        bases = (_Derived,)
    name = f"{_PREFIX}{_where(original)}]"
    namespace = {"__module__": __name__, "__qualname__": name, "_original": original}
    try:
        return type(name, bases, namespace)
    except Exception:  # a layout conflict, or an __init_subclass__ that refuses
        return None


def _message(dead: DeadLettered, original: type[BaseException]) -> str:
    """``str()`` of the original exception ``dead`` stands for."""
    if isinstance(dead, original):
        try:
            return str(original.__str__(dead))
        except Exception:  # a __str__ reading an attribute its __init__ could not set
            pass
    return BaseException.__str__(dead)


def __getattr__(name: str) -> type[DeadLettered]:
    """Rebuild ``DeadLettered[module:Name|reason|entry]`` on the caller's side (module doc)."""
    return _named(name, caller=True)


def _named(name: str, *, caller: bool) -> type[DeadLettered]:
    """The class of the dead letter ``name`` labels, for the caller or for the worker."""
    if not (name.startswith(_PREFIX) and name.endswith("]")):
        raise AttributeError(name)
    where, _, label = name[len(_PREFIX) : -1].partition(_LABEL)
    reason, _, entry = label.partition(_LABEL)
    if not reason or not (entry == "" or entry.isdigit()):
        raise AttributeError(name)
    entry_id = int(entry) if entry else None
    module_name, _, qualname = where.partition(":")
    found: Any = sys.modules.get(module_name.replace("/", "."))
    for part in qualname.split("/"):
        found = getattr(found, part, None)
    if isinstance(found, type) and issubclass(found, BaseException):
        kind = _kind(found, caller=caller)
        if kind is not None:
            return _labelled(kind, where, reason, entry_id)
    type_name = qualname.replace("/", ".")
    return _labelled(_Unresolved, where, reason, entry_id, _type_name=type_name)
