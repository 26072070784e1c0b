"""The one clock every stored timestamp comes from: timezone-aware UTC."""

from __future__ import annotations

from datetime import datetime, timezone


def utcnow() -> datetime:
    """Now, in UTC, timezone-aware (stores compare and subtract these, never naive times)."""
    return datetime.now(timezone.utc)
