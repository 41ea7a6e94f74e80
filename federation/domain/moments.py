"""Durations and moments, one grammar for every reader: ``--older-than 30d``, ``--since 2w``, the
dashboard's ``?window=7d`` and ``?since=`` (an ISO 8601 time or a duration back from now)."""

from __future__ import annotations

import re
from datetime import datetime, time, timedelta, timezone
from typing import Any

from ..errors import ValidationError

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"(\d+)([smhdw])")


def parse_duration(text: str) -> timedelta:
    """``30d``, ``12h``, ``90m``, ``2w``, ``45s`` -> a positive :class:`timedelta`; else ValidationError."""
    raw = str(text).strip().lower()
    match = _DURATION.fullmatch(raw)
    if not match:
        raise ValidationError(
            f"{text!r} is not a duration: use a whole number and a unit, e.g. 30d (days), 12h (hours), "
            "90m (minutes), 2w (weeks), 45s (seconds)")
    amount = int(match.group(1))
    if amount <= 0:
        raise ValidationError(f"{text!r} is not accepted: the duration must be greater than zero")
    try:
        return timedelta(seconds=amount * _UNITS[match.group(2)])
    except OverflowError:
        raise ValidationError(f"{text!r} is too long a duration") from None


def parse_iso(text: Any) -> datetime | None:
    """An aware datetime from an ISO 8601 string (naive means UTC), or None."""
    if not isinstance(text, str):
        return None
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def parse_moment(text: str, now: datetime | None = None) -> datetime:
    """An ISO 8601 time (UTC unless it says otherwise), a time of day (``12:03:41Z``: the last one), or a
    duration back from *now* (90m, 12h, 7d, 2w)."""
    if _DURATION.fullmatch(str(text).strip().lower()):
        try:
            return (now or datetime.now(timezone.utc)) - parse_duration(text)
        except OverflowError:  # further back than a datetime reaches: the caller's mistake
            raise ValidationError(f"{text!r} reaches before the year 1") from None
    moment = parse_iso(text) or _time_of_day(text, now or datetime.now(timezone.utc))
    if moment is None:
        raise ValidationError(f"{text!r} is neither an ISO 8601 time nor a duration like 30m, 12h, 7d")
    return moment


def _time_of_day(text: str, now: datetime) -> datetime | None:
    """``12:03:41`` or ``12:03:41Z`` (UTC unless it says otherwise): the last such moment, today's or
    yesterday's when today's is still to come; None when *text* is no time of day."""
    try:
        clock = time.fromisoformat(str(text).strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    zone = clock.tzinfo or timezone.utc
    local = now.astimezone(zone)
    moment = datetime.combine(local.date(), clock.replace(tzinfo=None), tzinfo=zone)
    return moment - timedelta(days=1) if moment > local else moment
