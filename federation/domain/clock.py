"""Timestamps and ids, made in one place so both stores receive the same values."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone


def now() -> str:
    """An ISO 8601 UTC timestamp with microseconds (sorts as text)."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def now_and_after(seconds: float) -> tuple[str, str]:
    """``(now, now + seconds)`` as :func:`now` writes them (a lease's start and end, from one clock reading)."""
    start = now()
    return start, (datetime.fromisoformat(start) + timedelta(seconds=seconds)).isoformat(timespec="microseconds")


def new_id() -> str:
    return uuid.uuid4().hex
