"""The SQL store's message history: recorded with each message, read in indexed branches."""

from __future__ import annotations

import operator

from . import sqltext as _sql
from .database import Tx
from ..domain.entities import MESSAGE_HISTORY
from ..errors import ValidationError
from .sql_base import SqlPart

__all__ = ["HistorySql"]


class HistorySql(SqlPart):
    """What each agent sent and received, newest first."""

    def save_history(self, direction: str, messages: list[dict]) -> None:
        """Nothing to do: the database records history in the transaction of the message itself."""

    @staticmethod
    def _add_history(tx: Tx, entries: list[dict]) -> None:
        if entries:
            tx.executemany(_sql.insert(MESSAGE_HISTORY), [MESSAGE_HISTORY.row_of(e) for e in entries])

    # History entries of one agent, newest first, in four indexed branches
    # (each reads at most *limit* rows from its index): sent entries where the
    # agent is the sender or the recipient, and claimed messages where it is
    # the recipient or the sender.  A received entry is the claimed message
    # itself: recording receipt as ``messages.read_at`` instead of copying every
    # claimed message into ``message_history`` keeps a claim to one UPDATE.
    # Ordered by (at, seq, timestamp, message_id) descending; ``before`` is a
    # position in that order.
    _HISTORY_BRANCHES = (
        ("SELECT direction, sender, recipient, content, message_type, timestamp, message_id, timestamp AS at, "
         "id AS seq FROM message_history WHERE sender = ?{pos_h} ORDER BY timestamp DESC, id DESC LIMIT ?", 1),
        ("SELECT direction, sender, recipient, content, message_type, timestamp, message_id, timestamp AS at, "
         "id AS seq FROM message_history WHERE recipient = ? AND sender <> ?{pos_h} "
         "ORDER BY timestamp DESC, id DESC LIMIT ?", 2),
        ("SELECT 'received', sender, recipient, content, message_type, timestamp, id, read_at, 0 FROM messages "
         "WHERE recipient = ? AND read_at IS NOT NULL{pos_m} ORDER BY read_at DESC, timestamp DESC, id DESC LIMIT ?", 1),
        ("SELECT 'received', sender, recipient, content, message_type, timestamp, id, read_at, 0 FROM messages "
         "WHERE sender = ? AND recipient <> ? AND read_at IS NOT NULL{pos_m} "
         "ORDER BY read_at DESC, timestamp DESC, id DESC LIMIT ?", 2),
    )
    # the whole federation's history (not a per-tick read: no index orders it)
    _HISTORY_ALL = (
        ("SELECT direction, sender, recipient, content, message_type, timestamp, message_id, timestamp AS at, "
         "id AS seq FROM message_history WHERE 1 = 1{pos_h} ORDER BY timestamp DESC, id DESC LIMIT ?", 0),
        ("SELECT 'received', sender, recipient, content, message_type, timestamp, id, read_at, 0 FROM messages "
         "WHERE read_at IS NOT NULL{pos_m} ORDER BY read_at DESC, timestamp DESC, id DESC LIMIT ?", 0),
    )

    @staticmethod
    def _history_position(tx: Tx, before: tuple[str, str], agent: str | None = None) -> tuple:
        """Where the cursor entry *before* sits; it must be an entry of *agent*'s history (as in phase 1)."""
        direction, message_id = before
        mine = "" if agent is None else " AND (sender = ? OR recipient = ?)"
        whose = () if agent is None else (agent, agent)
        if direction == "received":
            row = tx.fetchone("SELECT read_at, timestamp FROM messages WHERE id = ? AND read_at IS NOT NULL" + mine,
                              (message_id, *whose))
            position = None if row is None else (row[0], 0, row[1], message_id)
        else:
            row = tx.fetchone("SELECT timestamp, id FROM message_history WHERE message_id = ? AND direction = ?"
                              + mine + " ORDER BY id LIMIT 1", (message_id, direction, *whose))
            position = None if row is None else (row[0], row[1], row[0], message_id)
        if position is None:
            raise ValidationError(f"before {direction}:{message_id} is not an entry of this history")
        return position

    def load_history(self, agent: str | None = None, limit: int = 100,
                     before: tuple[str, str] | None = None) -> list[dict]:
        if limit <= 0:
            return []

        def fn(tx: Tx) -> list[tuple]:
            position = None if before is None else self._history_position(tx, before, agent)
            pos_h = "" if position is None else " AND (timestamp, id, timestamp, message_id) < (?, ?, ?, ?)"
            pos_m = "" if position is None else " AND (read_at, 0, timestamp, id) < (?, ?, ?, ?)"
            pos = () if position is None else tuple(position)
            chosen = self._HISTORY_ALL if agent is None else self._HISTORY_BRANCHES
            branches = [(b.format(pos_h=pos_h, pos_m=pos_m), n) for b, n in chosen]
            rows: list[tuple] = []
            for sql, n in branches:
                rows += tx.fetchall(sql, (agent,) * n + pos + (limit,))
            return rows

        rows = self.db.read(fn)
        rows.sort(key=operator.itemgetter(7, 8, 5, 6), reverse=True)
        width = len(MESSAGE_HISTORY.fields)
        return [MESSAGE_HISTORY.from_row(r[:width]) for r in reversed(rows[:limit])]
