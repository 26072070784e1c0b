"""The ``celery reliable`` command group, registered through ``celery.commands``.

Each sub-command module adds itself to :data:`reliable`; bad arguments are click usage
errors (one line, exit 2).
"""

from __future__ import annotations

from . import breakers as _breakers  # noqa: F401  (registers ``breakers``)
from . import db as _db  # noqa: F401  (registers the ``db`` group)
from . import dlq as _dlq  # noqa: F401  (registers the ``dlq`` group)
from . import flower as _flower  # noqa: F401  (registers ``flower``)
from . import health as _health  # noqa: F401  (registers ``health``)
from . import maintenance as _maintenance  # noqa: F401  (``cleanup``, ``recover-stuck``)
from . import relay as _relay  # noqa: F401  (registers ``relay``)
from . import rows as _rows  # noqa: F401  (the ``outbox`` and ``inbox`` groups)
from .base import reliable

__all__ = ["reliable"]
