"""Values as each side holds them: the legacy view of a database answer, copies, frozen bases for deltas."""

from __future__ import annotations

import copy
import dataclasses
import marshal
from typing import Any

from ..domain.entities import CONTEXT, MESSAGES, POLLS, PROFILES, SESSION_ARTIFACTS, SESSION_REVIEWS, SESSION_ROLES, SESSIONS


# ---------------------------------------------------------------------------
# the legacy record as the federation reads it (what the database side returns), for comparisons


def _legacy_view(entity: str, owner: str | None, value: Any) -> Any:
    """*value* read by an adopter's function, with the defaults the database side applies."""
    if not isinstance(value, (dict, list)):
        return value
    if entity == "polls" and isinstance(value, dict):
        return {pid: {**POLLS.record(p, fallback={"id": pid}), "votes": dict(p.get("votes") or {})}
                if isinstance(p, dict) else p for pid, p in value.items()}
    if entity == "context" and isinstance(value, dict):
        return CONTEXT.record(value, given={"agent": owner})
    if entity == "profile" and isinstance(value, dict):
        return PROFILES.record(value, given={"agent": owner})
    if entity == "expertise" and isinstance(value, dict):
        domains = value.get("domains") or []
        return {"agent": owner, "domains": sorted(domains), "updated_at": value.get("updated_at")} if domains \
            else None
    if entity == "session" and isinstance(value, dict):
        session = SESSIONS.record(value, fallback={"id": owner})
        for part in (SESSION_ROLES, SESSION_ARTIFACTS, SESSION_REVIEWS):
            session[part.container] = dict(value.get(part.container) or {})
        return session
    if entity == "inbox" and isinstance(value, list):
        return sorted((MESSAGES.record(m, fallback={"recipient": owner}) if isinstance(m, dict) else m
                       for m in value), key=lambda m: (str(m.get("timestamp") or ""), str(m.get("id")))
                      if isinstance(m, dict) else ("", ""))
    return value


def _is_read(message: Any) -> bool:
    """A message of a list-file inbox that its reader marked read (``read: true`` or a ``read_at``)."""
    return isinstance(message, dict) and bool(message.get("read") or message.get("read_at"))


def _unread(value: Any) -> Any:
    """The unread messages of a list-file inbox (what the database's inbox holds)."""
    return [m for m in value if not _is_read(m)] if isinstance(value, list) else value


def _by_id(value: Any) -> dict[str, dict]:
    """A list of messages as {id: message} (a message without a text id cannot be merged: left out)."""
    if not isinstance(value, list):
        return {}
    return {m["id"]: m for m in value if isinstance(m, dict) and isinstance(m.get("id"), str)}


def _db_load(store: Any, entity: str, owner: str | None) -> Any:
    """The database's answer to a Load of *entity*."""
    if entity == "polls":
        return store.load_polls()
    if entity == "inbox":
        return store.load_inbox(owner)
    method = {"context": store.load_context, "expertise": store.load_expertise, "profile": store.load_profile,
              "session": store.load_session}[entity]
    return method(owner)


def _copy(value: Any) -> Any:
    """A deep copy of a JSON document (marshal: ten times faster than copy.deepcopy on a polls.json)."""
    try:
        return marshal.loads(marshal.dumps(value))
    except ValueError:  # a type marshal does not know: the general copy
        return copy.deepcopy(value)


_ABSENT = object()


@dataclasses.dataclass(frozen=True)
class _Frozen:
    """A document marshal cannot hold: a deep copy."""

    value: Any


def _freeze(value: Any) -> Any:
    try:
        return marshal.dumps(value)
    except ValueError:
        return _Frozen(copy.deepcopy(value))


def _thaw(frozen: Any) -> Any:
    return marshal.loads(frozen) if isinstance(frozen, bytes) else copy.deepcopy(frozen.value)
