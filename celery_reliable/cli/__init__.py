"""The ``celery reliable`` command group, registered through ``celery.commands``.

Each sub-command module adds itself to :data:`reliable`; bad arguments are click usage
errors (one line, exit 2).
"""

from __future__ import annotations

from . import db as _db  # noqa: F401  (registers the ``db`` group)
from . import relay as _relay  # noqa: F401  (registers ``relay``)
from .base import reliable

__all__ = ["reliable"]
