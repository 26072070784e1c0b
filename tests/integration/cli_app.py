"""An app for ``celery -A tests.integration.cli_app`` in tests/integration/test_cli_errors.py.

Named ``shop``, as an app usually is, while ``-A`` names its module: a hint must repeat
what the operator typed. Its store is PostgreSQL under a table prefix that has no tables.
"""

from __future__ import annotations

from celery import Celery

from celery_reliable import Reliable
from tests.support import SERVICES, unique

app = Celery("shop", broker="memory://", set_as_current=False)
app.conf.reliable_database_url = SERVICES["postgresql"]
app.conf.reliable_table_prefix = unique("never_migrated_")
Reliable(app)
