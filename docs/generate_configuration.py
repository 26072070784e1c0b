"""Write docs/configuration.md from celery_reliable.settings, so the reference cannot drift.

    python docs/generate_configuration.py          # rewrite the file
    python docs/generate_configuration.py --check  # exit 1 if it is stale (a test runs this)
"""

from __future__ import annotations

import sys
from datetime import timedelta
from pathlib import Path

from celery_reliable.settings import documented_settings

TARGET = Path(__file__).with_name("configuration.md")


def _default(value: object) -> str:
    if value is None:
        return "unset"
    if isinstance(value, timedelta):
        return f"{value.total_seconds():g} s"
    return repr(value)


def render() -> str:
    lines = [
        "# Configuration reference",
        "",
        "Generated from `celery_reliable/settings.py` by `docs/generate_configuration.py`;",
        "do not edit by hand. Settings live in `app.conf`. An unknown `reliable_*` key or a bad",
        "value raises `ConfigurationError` naming the key, and a worker refuses to start.",
        "Durations accept seconds, a `timedelta` or text such as `500ms`, `30s`, `5m`, `12h`,",
        "`30d`.",
        "",
    ]
    for key, default, doc in documented_settings():
        lines += [f"## `{key}`", "", f"Default: {_default(default)}", "", doc, ""]
    return "\n".join(lines)


if __name__ == "__main__":
    text = render()
    if "--check" in sys.argv:
        sys.exit(0 if TARGET.read_text() == text else 1)
    TARGET.write_text(text)
