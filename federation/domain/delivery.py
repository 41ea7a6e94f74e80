"""What the delivery files read from the disk may hold (issue 25: every file is validated before use).

The lease journal (``leased/.leases.json``), the ``dead/`` files and the key
files of idempotent sends (``sent_keys/``) are read from the shared disk, which
anyone who mounts the root can write (docs/untrusted-files.md).  Their numbers
are bounded, their times are timestamps as :func:`federation.domain.clock.now`
writes them, and a key file must be the sender's own.  Each function says what
is wrong (a reason for the file's listing), or None; nothing here raises.

- ``attempt``: a whole number from 0 to :data:`MAX_ATTEMPT` (the highest
  ``FEDERATION_MAX_ATTEMPTS``): ``10**23`` is not a delivery count, and would
  not fit the database's ``INTEGER`` column.
- ``lease_until``, ``dead_at``: an ISO 8601 UTC timestamp (``+00:00``, with
  microseconds); a lease ends at most :data:`LEASE_HORIZON_S` after now (the
  longest lease, plus as much again for hosts whose clocks disagree): a lease
  "until 9999" would hide a message forever.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from . import validate as _validate
from ..config import MAX_ATTEMPTS_LIMIT

__all__ = ["MAX_ATTEMPT", "MAX_LEASE_S", "LEASE_HORIZON_S", "attempt_problem", "time_problem", "lease_problem",
           "journal_entry", "delivery_problem", "key_file_problem"]

#: the highest delivery count a file may hold
MAX_ATTEMPT = MAX_ATTEMPTS_LIMIT
#: the longest lease a receive takes (seconds)
MAX_LEASE_S = 86400.0
#: how far after now a lease read from the disk may end
LEASE_HORIZON_S = 2 * MAX_LEASE_S
_TIME_CHARS = 40


def _shown(value: Any) -> str:
    return repr(value)[:60]


def attempt_problem(value: Any) -> str | None:
    """Why *value* is not a delivery count, or None."""
    if type(value) is not int:
        return f"attempt {_shown(value)} is not a whole number"
    if not 0 <= value <= MAX_ATTEMPT:
        return f"attempt {_shown(value)} is out of range (0 to {MAX_ATTEMPT})"
    return None


def _moment(value: Any) -> datetime | None:
    if not isinstance(value, str) or len(value) > _TIME_CHARS:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    if moment.utcoffset() is None or moment.utcoffset() != timedelta(0):
        return None
    # the one spelling clock.now() writes: times are compared as text, by both stores
    return moment if moment.isoformat(timespec="microseconds") == value else None


def time_problem(value: Any, what: str) -> str | None:
    """Why *value* is not a timestamp as the federation writes them (or null), or None."""
    if value is None or _moment(value) is not None:
        return None
    return f"{what} {_shown(value)} is not a UTC timestamp such as 2026-01-31T12:00:00.000000+00:00"


def lease_problem(value: Any, now: str) -> str | None:
    """Why *value* is not the end of a lease (a timestamp, or null) as seen at *now*, or None."""
    problem = time_problem(value, "lease_until")
    if problem or value is None:
        return problem
    start = _moment(now)
    if start is not None and _moment(value) > start + timedelta(seconds=LEASE_HORIZON_S):
        return (f"lease_until {_shown(value)} is out of range: a lease ends at most {LEASE_HORIZON_S:.0f} s "
                f"after now ({now})")
    return None


def journal_entry(entry: Any, now: str) -> tuple[tuple[int, str | None] | None, str | None]:
    """A lease journal entry ``[attempt, lease_until]``: ``((attempt, lease_until), None)``, or
    ``(None, reason)`` when it is not one."""
    if not isinstance(entry, list) or len(entry) != 2:
        return None, f"{_shown(entry)} is not [attempt, lease_until]"
    problem = attempt_problem(entry[0]) or lease_problem(entry[1], now)
    return (None, problem) if problem else ((entry[0], entry[1]), None)


def delivery_problem(data: dict) -> str | None:
    """Why the delivery fields of a ``dead/`` (or leased) message file cannot be used, or None."""
    if "attempt" in data and (problem := attempt_problem(data["attempt"])):
        return problem
    return time_problem(data.get("lease_until"), "lease_until") or time_problem(data.get("dead_at"), "dead_at")


def key_file_problem(data: Any, sender: str, key: str) -> str | None:
    """Why a ``sent_keys/`` file cannot stand for *sender*'s send under *key*, or None.

    It must be *sender*'s, for *key*, and name at least one message: ``ids``
    (valid, different message ids) and ``recipients`` (one valid agent name per id).
    Whether each message is the sender's is for the caller to check where it can.
    """
    if not isinstance(data, dict):
        return "a key file must be a JSON object"
    if data.get("key") != key:
        return "it is not the file of this key"
    if data.get("sender") != sender:
        return f"it says sender {_shown(data.get('sender'))}, but it is in {sender!r}'s sent_keys/"
    ids, recipients = data.get("ids"), data.get("recipients")
    if not isinstance(ids, list) or not ids:
        return "it names no message (\"ids\" must be a non-empty list)"
    if not all(_validate.is_ident(i) for i in ids) or len(set(ids)) != len(ids):
        return "its \"ids\" are not different valid message ids"
    if not isinstance(recipients, list) or len(recipients) != len(ids) or not all(
            _validate.is_agent(r) for r in recipients):
        return "its \"recipients\" are not one valid agent name per id"
    return None
