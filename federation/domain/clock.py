"""Timestamps and ids, made in one place so both stores receive the same values."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone


def now() -> str:
    """An ISO 8601 UTC timestamp with microseconds (sorts as text)."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def new_id() -> str:
    return uuid.uuid4().hex
