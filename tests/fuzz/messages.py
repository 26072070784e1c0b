"""Malformed messages, seeded and reproducible, each with the dead letter it must end as.

A message is what any broker client can publish: a body, a content type and encoding,
headers and properties. The classes are those of issue #7 (garbage bodies, wrong and
missing content types, unknown task names, missing or invalid headers, huge payloads,
invalid UTF-8, pickle payloads) plus expired messages. Every message is built to be
undeliverable for one stated reason, never by accident valid: each class breaks one rule
on purpose and keeps the rest right (a valid body and id unless the body or id is the
point). Random names for unknown tasks carry a prefix no registered task has.

The expectation is written down here, from the user contract (SPEC.md, the intake guide),
never computed by the code under test:

========================  =========================================================
``DeserializationFailed``  the body does not decode, its content type is not accepted
                           (pickle, YAML, none at all, a trusted raw type), or it is not
                           ``[args, kwargs, embed]`` with a task id, time limit and ETA
                           Celery can use
``HandlerNotFound``        the task header names no registered task, or there is none
                           (and the body decodes: a message Celery cannot even decode
                           without a task name is a ``DeserializationFailed``)
``ValidationFailed``       a ``ReliableTask`` message whose ``reliable_message_id``
                           header or task id cannot identify it in the inbox
``MessageExpired``         a valid message past its ``expires``
========================  =========================================================

Each message also says how its dead letter is recognised: by the bytes of its body (every
entry from the intake keeps them, byte for byte; a compressed body is kept decompressed),
or, for the ``ReliableTask`` pipeline's ``ValidationFailed``, by the unique argument it
carries.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import random
import string
import uuid
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from celery_reliable import MESSAGE_ID_HEADER, DeadLetterReason
from tests.acceptance.intake import LeavesAMark

DF = DeadLetterReason.DESERIALIZATION_FAILED
HNF = DeadLetterReason.HANDLER_NOT_FOUND
VF = DeadLetterReason.VALIDATION_FAILED
EXPIRED = DeadLetterReason.MESSAGE_EXPIRED

#: A ReliableTask of tests/acceptance/worker_app.py: the registered name.
KNOWN = "effect"
JSON = "application/json"
PICKLE = "application/x-python-serialize"
EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
#: Content types a JSON-only worker refuses, and the two kombu trusts as raw data.
REFUSED_TYPES = (
    "application/x-yaml",
    "application/x-msgpack",
    "application/xml",
    "application/octet-stream",
    "text/plain",
    "text/html",
    "APPLICATION/JSON",
    "application/json; charset=utf-8",
    " application/json",
    "application/data",
    "application/text",
    "application/json\x00",
    "application/\u202ejson",
)
#: Bytes that are never UTF-8: a stray continuation byte, an overlong form, a lone
#: surrogate's encoding, and bytes that never occur in UTF-8 at all.
INVALID_UTF8 = (b"\x80", b"\xc0\xaf", b"\xed\xa0\x80", b"\xff", b"\xfe\xff", b"\xf8\x88\x80")
#: AMQP carries a short string (a content type, an encoding) in at most 255 bytes.
SHORTSTR = 255


@dataclass(frozen=True)
class Malformed:
    """One message to publish, and the dead letter it must end as."""

    kind: str
    body: bytes
    content_type: str | bytes | None
    content_encoding: str | None
    headers: Any  # a dict, or None; a bytes value is published as invalid UTF-8
    expected: DeadLetterReason
    #: ("body", sha256 of the body as stored) or ("args", the arguments as JSON).
    fingerprint: tuple[str, str]
    properties: dict[str, Any] = field(default_factory=dict)
    #: The arguments' print, for an entry that may keep them without the raw body (an
    #: entry cut to fit MySQL's statement limit).
    args_fingerprint: tuple[str, str] | None = None


def body_print(body: bytes) -> tuple[str, str]:
    return ("body", hashlib.sha256(body).hexdigest())


def args_print(args: list[Any]) -> tuple[str, str]:
    return ("args", json.dumps(args, sort_keys=True))


class Generator:
    """The messages of one run: ``Generator(seed, transport, markers).batch(count)``.

    ``transport`` is "amqp" or "redis": AMQP has no room for a content type over 255
    bytes or a header frame over its frame size, RabbitMQ closes the publisher's
    connection over an infinite or NaN header value, and a content type that is not UTF-8
    kills py-amqp's reader before any consumer code runs (see test_transport.py), so those
    variants go to Redis only. ``markers`` is where an unpickled payload would leave its
    mark.
    """

    def __init__(self, seed: int, transport: str, markers: Path) -> None:
        self.rng = random.Random(seed)
        self.transport = transport
        self.markers = markers
        self._pickles = 0
        self.kinds: dict[str, Callable[[], Malformed]] = {
            "garbage-body": self.garbage_body,
            "wrong-content-type": self.wrong_content_type,
            "missing-content-type": self.missing_content_type,
            "unknown-task": self.unknown_task,
            "missing-headers": self.missing_headers,
            "invalid-headers": self.invalid_headers,
            "invalid-message-id": self.invalid_message_id,
            "invalid-utf8": self.invalid_utf8,
            "pickle": self.pickle_payload,
            "expired": self.expired,
        }

    def batch(self, count: int) -> list[Malformed]:
        """``count`` messages: a few huge ones, the rest spread evenly over the classes."""
        huge = min(8, max(2, count // 1000), count)
        messages = [self.huge() for _ in range(huge)]
        kinds = list(self.kinds.values())
        messages += [kinds[n % len(kinds)]() for n in range(count - huge)]
        self.rng.shuffle(messages)
        return messages

    # -- pieces ------------------------------------------------------------------------------

    def token(self) -> str:
        return f"fz-{self.rng.getrandbits(64):016x}"

    def task_id(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def headers(self, task: Any = KNOWN, **extra: Any) -> dict[str, Any]:
        """Protocol 2 headers, valid unless ``extra`` breaks them, with some harmless noise."""
        headers: dict[str, Any] = {"lang": "py", "task": task, "id": self.task_id()}
        if self.rng.random() < 0.3:
            headers[f"x-{self.token()}"] = self.noise()
        headers.update(extra)
        return headers

    def noise(self) -> Any:
        """A header value no task reads: it must change nothing."""
        return self.rng.choice(
            [
                "\x00nul\x00",
                "\ud800lone surrogate",
                "\u202eright-to-left",
                "\U0001f4a9" * 3,
                2**62,
                -(2**31),
                1.5e300,
                True,
                None,
                {"nested": {"deeper": [1, "two", None]}},
                [1, [2, [3]]],
                "x" * 2000,
                *self.non_finite(),
            ]
        )

    def non_finite(self) -> list[float]:
        """Infinity and NaN: JSON (as kombu writes it) carries them; RabbitMQ refuses them
        in a header table and closes the publisher's connection."""
        return [float("inf"), float("nan")] if self.transport == "redis" else []

    def valid_body(self, args: list[Any] | None = None) -> bytes:
        return json.dumps([[self.token()] if args is None else args, {}, EMBED]).encode()

    def garbage(self, size: int | None = None) -> bytes:
        """Bytes that are not a task body: random, text, or JSON broken or of a wrong shape."""
        size = size or self.rng.randint(1, 4096)
        shape = self.rng.randrange(5)
        if shape == 0:
            data = self.rng.randbytes(size)
        elif shape == 1:
            data = "".join(self.rng.choices(string.printable, k=size)).encode()
        elif shape == 2:  # cut short: never valid JSON
            whole = self.valid_body()
            data = whole[: self.rng.randrange(1, len(whole) - 1)]
        elif shape == 3:
            data = json.dumps(self.wrong_shape()).encode()
        else:
            data = b""
        if _is_task_body(data):  # astronomically unlikely; then it would run, not fail
            return b"\x00" + data
        return data

    def wrong_shape(self) -> Any:
        """JSON that decodes but breaks the ``[args, kwargs, embed]`` rule in one place."""
        args, kwargs = [self.token()], {}
        return self.rng.choice(
            [
                [args, kwargs],
                [args, kwargs, EMBED, "extra"],
                [],
                {"hello": "world"},  # a dict without "args" is no "hybrid" body either
                "a string",
                42,
                None,
                [{"not": "a list"}, kwargs, EMBED],
                [args, ["not", "a", "dict"], EMBED],
                [args, kwargs, ["not", "a", "dict"]],
                ["a string", kwargs, EMBED],
                [7, kwargs, EMBED],
            ]
        )

    def unknown_name(self) -> Any:
        """A task name nothing registers (a prefix no task has), or no name at all."""
        prefix = f"fuzz.unregistered.{self.token()}"
        return self.rng.choice(
            [
                prefix,
                f"{prefix}.\u4efb\u52a1\U0001f680",
                f"{prefix}\x00nul",
                f"{prefix}\udcff",  # a lone surrogate: what a decoder makes of bad UTF-8
                f"{prefix}" + "x" * self.rng.randint(300, 5000),
                f"{prefix}'; DROP TABLE dead_letter; --",
                f"<script>alert('{prefix}')</script>",
                "",
                " ",
                7,
                3.5,
                True,
                None,
                ["a", "list"],
                {"a": "dict"},
                f"{prefix}".encode() + self.rng.choice(INVALID_UTF8),
            ]
        )

    def pickled(self, protocol: int | None = None) -> bytes:
        """A pickle that creates a file in ``markers`` if anything ever loads it."""
        self._pickles += 1
        mark = LeavesAMark(self.markers / f"unpickled-{self._pickles}")
        if protocol is None:
            protocol = self.rng.randint(0, pickle.HIGHEST_PROTOCOL)
        return pickle.dumps([[mark], {"also": mark}, EMBED], protocol=protocol)

    # -- the classes ------------------------------------------------------------------------

    def garbage_body(self) -> Malformed:
        body = self.garbage()
        return Malformed("garbage-body", body, JSON, "utf-8", self.headers(), DF, body_print(body))

    def wrong_content_type(self) -> Malformed:
        content_type: str | bytes = self.rng.choice(
            [
                *REFUSED_TYPES,
                "application/" + "x" * self.rng.randint(200, 240),
                "".join(self.rng.choices(string.printable, k=self.rng.randint(1, 60))),
            ]
        )
        if self.transport == "redis" and self.rng.random() < 0.2:
            content_type = "application/" + "y" * 5000  # no AMQP short-string limit here
        body = self.valid_body()
        return Malformed(
            "wrong-content-type", body, content_type, "utf-8", self.headers(), DF, body_print(body)
        )

    def missing_content_type(self) -> Malformed:
        body = self.rng.choice([self.valid_body(), self.garbage()])
        encoding = self.rng.choice([None, "utf-8", "binary", "latin-1", "x-no-such-codec"])
        return Malformed(
            "missing-content-type", body, None, encoding, self.headers(), DF, body_print(body)
        )

    def unknown_task(self) -> Malformed:
        name = self.unknown_name()
        extra = {} if self.rng.random() < 0.8 else {"id": self.rng.choice([None, 5, ""])}
        headers = self.headers(task=name, **extra)
        if self.rng.random() < 0.1:
            del headers["id"]
        content_type, body = self.rng.choice(
            [
                (JSON, self.valid_body()),
                (JSON, self.valid_body(["\ud800", "\x00", {"deep": ["\udfff"]}])),
                (JSON, self.garbage()),
                (PICKLE, self.pickled()),
                ("application/x-yaml", b"- !!python/object/apply:os.system ['true']"),
            ]
        )
        return Malformed(
            "unknown-task", body, content_type, "utf-8", headers, HNF, body_print(body)
        )

    def missing_headers(self) -> Malformed:
        """No task header: a message Celery decodes to look for a protocol 1 task name."""
        headers = self.rng.choice([{}, None, {"id": self.task_id()}, {"x-other": self.noise()}])
        decodable = self.rng.random() < 0.7
        if decodable:  # decodes, names no task (a dict body never has a "task" key here)
            body = json.dumps(
                self.rng.choice(
                    [
                        [[self.token()], {}, EMBED],
                        {"hello": self.token()},
                        {"id": self.task_id(), "args": [1]},
                        [],
                        "text",
                        12,
                    ]
                )
            ).encode()
            content_type: str | None = JSON
        else:  # Celery must decode it to look for a task name, and cannot
            content_type, body = self.rng.choice(
                [
                    (JSON, b"\xff" + self.garbage()),  # never UTF-8, so never JSON
                    (JSON, self.valid_body()[:-1]),
                    (PICKLE, self.pickled()),
                    ("text/plain", b"x"),
                ]
            )
        reason = HNF if decodable else DF
        return Malformed(
            "missing-headers", body, content_type, "utf-8", headers, reason, body_print(body)
        )

    def invalid_headers(self) -> Malformed:
        """A registered task with one protocol header Celery cannot use."""
        name, value = self.rng.choice(
            [
                ("id", None),
                ("id", 5),
                ("id", 2.5),
                ("id", ""),
                ("id", ["a", "list"]),
                ("id", {"a": "dict"}),
                ("id", True),
                ("eta", "tomorrow"),
                ("eta", "2024-13-45T99:99:99"),
                ("eta", 5),
                ("eta", ["2024-01-01"]),
                ("eta", "9999-12-31T23:59:59-12:00"),  # past the last datetime in UTC
                ("expires", "never"),
                ("expires", 7),
                ("expires", {"when": "later"}),
                ("timelimit", "ab"),
                ("timelimit", [1]),
                ("timelimit", [1, 2, 3]),
                ("timelimit", ["a", "b"]),
                ("timelimit", [-1, None]),
                ("timelimit", {"hard": 1}),
                ("timelimit", 5),
                *(("timelimit", [None, value]) for value in self.non_finite()),
            ]
            + ([("id", b"\xff\xfe")] if self.transport == "amqp" else [])
        )
        headers = self.headers()
        if name == "id" and value is None and self.rng.random() < 0.5:
            del headers["id"]
        else:
            headers[name] = value
        body = self.valid_body()
        return Malformed("invalid-headers", body, JSON, "utf-8", headers, DF, body_print(body))

    def invalid_message_id(self) -> Malformed:
        """A valid message a ReliableTask cannot identify: the inbox has no key for it."""
        args = [self.token()]
        headers = self.headers()
        if self.rng.random() < 0.7:
            headers[MESSAGE_ID_HEADER] = self.rng.choice(
                [7, "", " padded ", "x" * 256, ["a"], None, {"k": "v"}, "\t"]
            )
        else:  # no business key: the task id is the message id
            headers["id"] = self.rng.choice([" padded", "x" * 300, "\n"])
        body = self.valid_body(args)
        return Malformed("invalid-message-id", body, JSON, "utf-8", headers, VF, args_print(args))

    def invalid_utf8(self) -> Malformed:
        bad = self.rng.choice(INVALID_UTF8)
        whole = self.valid_body()
        cut = self.rng.randrange(len(whole))
        body = whole[:cut] + bad + whole[cut:]
        variant = self.rng.randrange(4)
        if variant == 0:  # the body of a registered task: it cannot be decoded
            return Malformed(
                "invalid-utf8", body, JSON, "utf-8", self.headers(), DF, body_print(body)
            )
        if variant == 1:  # an unknown task: looked up before any decoding
            headers = self.headers(task=f"fuzz.unregistered.{self.token()}")
            return Malformed("invalid-utf8", body, JSON, "utf-8", headers, HNF, body_print(body))
        if variant == 2:  # the task name itself
            headers = self.headers(task=b"fuzz.unregistered." + bad)
            body = self.valid_body()
            return Malformed("invalid-utf8", body, JSON, "utf-8", headers, HNF, body_print(body))
        body = self.valid_body()
        if self.transport == "redis":  # the content type (AMQP: see the class docstring)
            content_type: str | bytes = b"application/json" + bad
        else:
            content_type = "text/plain; charset=\udcff"
        return Malformed(
            "invalid-utf8", body, content_type, "utf-8", self.headers(), DF, body_print(body)
        )

    def pickle_payload(self) -> Malformed:
        """Pickles that would leave a mark if loaded, in every wrapping a sender could try."""
        body = self.pickled()
        variant = self.rng.randrange(8)
        headers = self.headers()
        content_type: str | None = PICKLE
        stored = body
        reason = DF
        if variant == 1:
            headers = self.headers(task=f"fuzz.unregistered.{self.token()}")
            reason = HNF
        elif variant == 2:
            content_type = JSON
        elif variant == 3:
            content_type = None
        elif variant == 4:
            content_type = self.rng.choice(["application/data", "application/text"])
        elif variant == 5:  # no task header: Celery must decode it to look for one
            headers = {}
        elif variant == 6:  # compressed: kombu decompresses it before anything decodes
            headers["compression"] = "application/x-gzip"
            body = zlib.compress(stored)
        elif variant == 7:  # a compression kombu does not know: the body stays as it is
            headers["compression"] = "application/x-no-such-compression"
        return Malformed(
            "pickle", body, content_type, "binary", headers, reason, body_print(stored)
        )

    def expired(self) -> Malformed:
        expires = self.rng.choice(
            [
                "2000-01-01T00:00:00+00:00",
                "2020-06-01T12:00:00",  # naive: taken as UTC
                "1970-01-01T00:00:00Z",
                "0001-01-01T00:00:00+14:00",
            ]
        )
        body = self.valid_body()
        headers = self.headers(expires=expires)
        return Malformed("expired", body, JSON, "utf-8", headers, EXPIRED, body_print(body))

    def huge(self) -> Malformed:
        """A body of 1 to 8 MB (and, on Redis, a header of 1 MB): nothing is lost (on MySQL an
        entry over the packet budget keeps a cut body and says so)."""
        size = self.rng.randint(1, 8) * 1024 * 1024
        variant = self.rng.randrange(4)
        headers = self.headers()
        content_type: str | None = JSON
        reason = DF
        args_fingerprint = None
        if variant == 0:
            body = self.rng.randbytes(size)
        elif variant == 1:  # decodes, for a task nobody has: the arguments are kept too
            args = ["z" * size]
            body = self.valid_body(args)
            args_fingerprint = args_print(args)
            headers = self.headers(task=f"fuzz.unregistered.{self.token()}")
            reason = HNF
            if self.transport == "redis":
                headers["x-huge"] = "h" * (1024 * 1024)
        elif variant == 2:
            body = pickle.dumps([[b"p" * size, LeavesAMark(self.markers / "huge")], {}, EMBED])
            content_type = PICKLE
        else:
            body = self.valid_body(["n" * size])
            content_type = None
        return Malformed(
            "huge",
            body,
            content_type,
            "utf-8",
            headers,
            reason,
            body_print(body),
            args_fingerprint=args_fingerprint,
        )


def _is_task_body(data: bytes) -> bool:
    """Independent of the code under test: would this run as ``[args, kwargs, embed]``?"""
    try:
        value = json.loads(data)
    except ValueError:
        return False
    return (
        isinstance(value, list)
        and len(value) == 3
        and isinstance(value[0], list)
        and isinstance(value[1], dict)
    )


def by_kind(messages: list[Malformed]) -> Iterator[tuple[str, int]]:
    yield from sorted(Counter(m.kind for m in messages).items())
