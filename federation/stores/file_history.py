"""The message history of phase 1, in memory, as the legacy server kept it (lost on restart).

The bodies of :mod:`federation.core`'s history functions (``core`` binds them to its tree; the shim wraps
``core``'s names).  The SQL store persists the history in the same transaction as the message.  One list
per federation root: two federations in one process (tests, a tool that serves two roots) never see each
other's history, and none needs a reset.  Bounded (issue 30): the newest :data:`IN_MEMORY_LIMIT` entries of
each, per root, so that a phase-1 process that runs for months holds a constant amount of memory (the
legacy server kept them all, ~2 KB each).
"""

from __future__ import annotations

import collections
from pathlib import Path

from ..domain.entities import MESSAGE_FIELDS, history_entry
from ..errors import ValidationError
from .files import Tree

__all__ = ["IN_MEMORY_LIMIT", "save_history", "load_history", "load_sent"]

IN_MEMORY_LIMIT = 10_000
_history: dict[Path, collections.deque] = {}
_sent: dict[Path, collections.deque] = {}  # the messages this process sent, whole (for load_sent)


def _in_memory(t: Tree, book: dict[Path, collections.deque]) -> collections.deque:
    """*t*'s entries in *book* (``_history`` or ``_sent``), the newest :data:`IN_MEMORY_LIMIT`;
    setdefault is atomic in CPython, and so is a bounded deque's extend."""
    found = book.get(t.root)
    return found if found is not None else book.setdefault(t.root, collections.deque(maxlen=IN_MEMORY_LIMIT))


def save_history(t: Tree, direction: str, messages: list[dict]) -> None:
    """Record *messages* as sent or received in the message history (in memory: lost on restart)."""
    _in_memory(t, _history).extend(history_entry(direction, m) for m in messages)
    if direction == "sent":
        _in_memory(t, _sent).extend({field: m.get(field) for field in MESSAGE_FIELDS} for m in messages)


def load_history(t: Tree, agent: str | None = None, limit: int = 100,
                 before: tuple[str, str] | None = None) -> list[dict]:
    """The last *limit* history entries (of *agent*, if given), oldest first.

    *before*: ``(direction, message_id)`` of an entry: only entries older than it.
    """
    kept = list(_history.get(t.root, ()))  # one C-level copy: another thread may append meanwhile
    rows = [e for e in kept if agent is None or agent in (e.get("sender"), e.get("recipient"))]
    if before is not None:
        direction, message_id = before
        cut = next((i for i, e in enumerate(rows)
                    if e["direction"] == direction and e["message_id"] == message_id), None)
        if cut is None:
            raise ValidationError(f"before {direction}:{message_id} is not an entry of this history")
        rows = rows[:cut]
    return [dict(e) for e in rows[-limit:]] if limit > 0 else []


def load_sent(t: Tree, agent: str, limit: int = 100, before: str | None = None) -> list[dict]:
    """The last *limit* messages *agent* sent (before message *before*), oldest first, with ``read_at``.

    Phase 1 keeps no read receipts: these are the messages this process sent
    (in memory, as the history), each with ``read_at`` None.
    """
    mine = sorted((m for m in list(_sent.get(t.root, ())) if m["sender"] == agent),
                  key=lambda m: (str(m["timestamp"]), m["id"]))
    if before is not None:
        cut = next((i for i, m in enumerate(mine) if m["id"] == before), None)
        if cut is None:
            raise ValidationError(f"before {before!r} is not the id of a message {agent} sent")
        mine = mine[:cut]
    return [{**m, "read_at": None} for m in mine[-limit:]] if limit > 0 else []
