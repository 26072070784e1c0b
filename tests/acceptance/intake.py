"""What the intake tests and the fuzz suite share: a payload that shows whether anything
unpickled it, and the check that a worker survived the messages it was sent."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from celery_reliable.testing import wait_for


class LeavesAMark:
    """Unpickling this creates a file: proof that something unpickled the body.

    Its pickle names only ``open`` and the path: it loads in any process, no import of this
    module needed, so a process that unpickles it cannot fail before leaving the mark.
    """

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (open, (self.path, "w"))


def still_working(stack: Any, worker: Any) -> None:
    """The worker survived: it is running, runs a normal task, and left nothing queued."""
    message_id = stack.send("effect", None)
    wait_for(
        lambda: (r := stack.status(message_id, "effect")) and r.status.value == "completed",
        60,
        what="a normal message after the bad one",
    )
    assert worker.proc.poll() is None
    assert stack.queue_depth() == 0
