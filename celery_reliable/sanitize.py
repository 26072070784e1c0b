"""One sanitizer for every text that reaches the store.

Exception messages, ``last_error`` and dead-letter fields quote whatever a sender or a
body produced. PostgreSQL refuses a NUL character in text, no driver can encode a lone
surrogate (py-amqp decodes invalid UTF-8 in headers into them), and either would turn a
message's own text into a write the store refuses. Taken for an outage, that refusal
would defer the message for ever; so every text passes through :func:`storable` first.
"""

from __future__ import annotations

from typing import overload


@overload
def storable(value: str, length: int | None = None) -> str: ...


@overload
def storable(value: None, length: int | None = None) -> None: ...


def storable(value: str | None, length: int | None = None) -> str | None:
    """``value`` as every store accepts it: NUL and lone surrogates escaped, cut to ``length``.

    The escapes make a value longer, so ``length`` (a column's size) is applied after them.
    """
    if not isinstance(value, str):
        return value
    if "\x00" in value or not value.isascii():
        value = value.encode("utf-8", "backslashreplace").decode("utf-8")
        value = value.replace("\x00", "\\x00")
    return value if length is None else value[:length]
