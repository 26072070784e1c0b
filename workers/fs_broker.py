"""kombu's filesystem transport, publishing atomically.

kombu (5.7) creates a message file and only then writes it. A consumer in another thread or
process can move the still-empty file away in between (its lock is advisory), read nothing
and drop the message: under load the demo lost one in a few dozen runs. Here the message is
written under a name no consumer picks up and renamed into place, which is atomic on POSIX.
Used by the example apps through ``broker_transport``; the URL stays ``filesystem://``.
"""

from __future__ import annotations

import os
import uuid
from typing import Any

from kombu.transport import filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps


class Channel(filesystem.Channel):  # type: ignore[misc]
    def _put(self, queue: str, payload: Any, **kwargs: Any) -> None:
        # Same name as kombu's (time-ordered); consumers only take '<...>.<queue>.msg'.
        name = f"{round(filesystem.monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        partial = os.path.join(self.data_folder_out, f".{uuid.uuid4()}.partial")
        with open(partial, "wb") as f:
            f.write(str_to_bytes(dumps(payload)))
        os.replace(partial, final)


class Transport(filesystem.Transport):  # type: ignore[misc]
    Channel = Channel
