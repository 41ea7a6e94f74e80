"""The SQL store's messages: sending, the inbox, delivery with leases and acknowledgements, dead letters,
idempotent sends, what an agent sent (docs/delivery.md)."""

from __future__ import annotations

import json
import operator

from ..domain import clock as _clock
from . import sqltext as _sql
from .database import Tx
from ..domain.entities import MESSAGES, history_entry
from ..errors import ValidationError
from .sql_base import SqlPart

__all__ = ["MessagesSql"]

_MSG_COLS = _sql.columns(MESSAGES)
_msg = MESSAGES.from_row

# A message is new (what check_inbox claims, legacy readers see in inbox/) while
# it is unread, never leased and not dead; deliverable (what receive leases)
# while unread, not dead and not under a lease; a dead letter is due once its
# last lease ended after max attempts.
_NEW = "read_at IS NULL AND lease_until IS NULL AND dead_at IS NULL"
_DELIVERABLE = "read_at IS NULL AND dead_at IS NULL AND (lease_until IS NULL OR lease_until < ?)"
_DUE_DEAD = "read_at IS NULL AND dead_at IS NULL AND lease_until IS NOT NULL AND lease_until < ? AND attempt >= ?"
_NO_LIMIT = 1 << 62
_MSG_COLS_OF_MESSAGES = ", ".join(f"messages.{c}" for c in MESSAGES.columns)

# Messages are ordered in Python by (timestamp, id), as the file side orders
# them, whatever the engine's collation would do with ORDER BY.
_BY_TIME = operator.itemgetter(MESSAGES.index("timestamp"), MESSAGES.index("id"))


class MessagesSql(SqlPart):
    """Messages and their delivery; history is recorded in the same transaction (``_add_history``)."""

    # -- messages -------------------------------------------------------------
    def save_message(self, message: dict) -> None:
        values = MESSAGES.row_of(message)

        def fn(tx: Tx) -> None:
            tx.execute(_sql.insert(MESSAGES), values)
            self._add_history(tx, [history_entry("sent", message)])
            self._notify(tx, [message])

        self.db.write(fn)

    def load_inbox(self, agent: str) -> list[dict]:
        rows = self.db.fetchall(
            f"SELECT {_MSG_COLS} FROM messages WHERE recipient = ? AND {_NEW}", (agent,))
        rows.sort(key=_BY_TIME)
        return [_msg(r) for r in rows]

    def claim_inbox(self, agent: str, ids: list[str] | None = None, read_at: str | None = None) -> list[dict]:
        """Claim unread messages: one ``UPDATE … WHERE read_at IS NULL RETURNING``.

        Claiming the whole inbox is one statement (one round trip on PostgreSQL,
        atomic on its own; a concurrent claimer re-checks ``read_at`` after
        waiting, so each message is claimed once).  Claiming given *ids* (the
        shim mirroring the other side's claim) may take several statements, in
        one transaction.
        """
        stamp = read_at or _clock.now()
        sql = (f"UPDATE messages SET read_at = ? WHERE recipient = ? AND {_NEW}{{extra}} "
               f"RETURNING {_MSG_COLS}")
        if ids is None:
            # not idempotent: a second run would claim nothing, so a lost connection is reported
            rows = self.db.write_statement(lambda tx: tx.fetchall(sql.format(extra=""), (stamp, agent)),
                                           idempotent=False)
        else:
            def fn(tx: Tx) -> list[tuple]:
                rows = []
                for start in range(0, len(ids), 500):
                    chunk = list(ids[start:start + 500])
                    marks = ", ".join("?" for _ in chunk)
                    rows += tx.fetchall(sql.format(extra=f" AND id IN ({marks})"), (stamp, agent, *chunk))
                return rows

            rows = self.db.write(fn)
        rows.sort(key=_BY_TIME)
        return [_msg(r) for r in rows]

    # -- delivery with leases and acknowledgements (issue 19, docs/delivery.md) ----------------
    def lease_inbox(self, agent: str, lease_until: str, now: str, limit: int | None = None,
                    max_attempts: int = 5, ids: list[str] | None = None) -> list[dict]:
        """Lease *agent*'s deliverable messages (new, or leased before and expired), oldest first.

        One transaction: expired leases already delivered *max_attempts* times
        become dead letters, then one ``UPDATE … RETURNING`` leases the oldest
        rest (PostgreSQL: picked ``FOR UPDATE SKIP LOCKED`` in a CTE, so
        concurrent receivers take disjoint sets without waiting on each other).
        *ids*: the shim mirroring the other side's lease leases exactly those.
        Each message comes back with ``attempt`` (1 the first time) and ``lease_until``.
        """
        pick = (f"SELECT id AS picked_id FROM messages WHERE recipient = ? AND {_DELIVERABLE} AND attempt < ? "
                f"ORDER BY timestamp, id LIMIT ?")
        dialect = self.db.dialect
        sql = dialect.lease_sql.format(pick=pick, deliverable=_DELIVERABLE, columns=_MSG_COLS,
                                       columns_of_messages=_MSG_COLS_OF_MESSAGES)

        def fn(tx: Tx) -> list[tuple]:
            tx.execute(f"UPDATE messages SET dead_at = ? WHERE recipient = ? AND {_DUE_DEAD}",
                       (now, agent, now, max_attempts))
            if ids is None:
                take = (agent, now, max_attempts, _NO_LIMIT if limit is None else limit)
                return tx.fetchall(sql, dialect.lease_params(take, lease_until, now))
            rows = []  # the shim mirroring the other side's lease: exactly those messages
            for start in range(0, len(ids), 500):
                chunk = list(ids[start:start + 500])
                marks = ", ".join("?" for _ in chunk)
                rows += tx.fetchall(
                    f"UPDATE messages SET attempt = attempt + 1, lease_until = ? WHERE recipient = ? AND "
                    f"{_DELIVERABLE} AND attempt < ? AND id IN ({marks}) RETURNING {_MSG_COLS}, attempt, lease_until",
                    (lease_until, agent, now, max_attempts, *chunk))
            return rows

        rows = self.db.write(fn)
        rows.sort(key=_BY_TIME)
        return [{**_msg(r), "attempt": r[7], "lease_until": r[8]} for r in rows]

    def ack_messages(self, agent: str, ids: list[str], read_at: str) -> list[dict]:
        """Acknowledge delivered messages of *agent* among *ids*: read now (``read_at``), never delivered
        again; the messages acknowledged now, in the order of *ids*."""
        def fn(tx: Tx) -> list[tuple]:
            done: list[tuple] = []
            for start in range(0, len(ids), 500):
                chunk = list(ids[start:start + 500])
                marks = ", ".join("?" for _ in chunk)
                done += tx.fetchall(
                    "UPDATE messages SET read_at = ? WHERE recipient = ? AND read_at IS NULL AND attempt > 0 "
                    f"AND id IN ({marks}) RETURNING {_MSG_COLS}", (read_at, agent, *chunk))
            return done

        done = {r[0]: _msg(r) for r in self.db.write(fn)}
        return [done[i] for i in dict.fromkeys(ids) if i in done]

    def load_dead_letters(self, agent: str | None, now: str, max_attempts: int = 5) -> list[dict]:
        """Messages delivered *max_attempts* times and never acknowledged (marked dead, or due: lease over)."""
        who = "" if agent is None else "recipient = ? AND "
        rows = self.db.fetchall(
            f"SELECT {_MSG_COLS}, attempt, lease_until, dead_at FROM messages WHERE {who}read_at IS NULL AND "
            f"(dead_at IS NOT NULL OR ({_DUE_DEAD}))", ((agent,) if agent else ()) + (now, max_attempts))
        rows.sort(key=_BY_TIME)
        return [{**_msg(r), "attempt": r[7], "lease_until": r[8], "dead_at": r[9] or r[8]} for r in rows]

    def save_keyed_messages(self, messages: list[dict], key: str) -> list[str]:
        """Deliver *messages* (one sender) under the sender's idempotency *key*, unless that key was used:
        then nothing is written and the ids of the first send are returned (by recipient)."""
        if not messages:  # the shim mirroring a send that found its key: nothing to write
            return []
        sender = messages[0]["sender"]
        cols = _MSG_COLS + ", created_at, idempotency_key"
        insert = f"INSERT INTO messages ({cols}) VALUES ({', '.join('?' for _ in cols.split(', '))})"

        def fn(tx: Tx) -> list[str]:
            tx.dialect.lock(tx, f"idempotency:{sender}:{key}")  # PostgreSQL; SQLite's writers are serial
            # a key carried in from the legacy files with messages read there before the move (issue 29): the
            # whole send, where the rows left may be part of a broadcast
            kept = tx.fetchone("SELECT ids FROM idempotency_keys WHERE sender = ? AND idempotency_key = ?", (sender, key))
            ids = _kept_ids(kept[0]) if kept else []
            if ids:
                return ids
            found = tx.fetchall("SELECT recipient, id FROM messages WHERE sender = ? AND idempotency_key = ?",
                                (sender, key))
            if found:
                return [i for _, i in sorted(found)]
            tx.executemany(insert, [(*MESSAGES.row_of(m), m["timestamp"], key) for m in messages])
            self._add_history(tx, [history_entry("sent", m) for m in messages])
            self._notify(tx, messages)
            return [m["id"] for m in messages]

        # safe to run again: a lost connection is retried by the caller and finds the key
        return self.db.write(fn)


    def _notify(self, tx: Tx, messages: list[dict]) -> None:
        """Wake the recipients' pulse(wait) at commit, where the engine can (PostgreSQL: NOTIFY is transactional)."""
        tx.dialect.notify(tx, {m["recipient"] for m in messages})

    def save_messages(self, messages: list[dict]) -> None:
        rows = [MESSAGES.row_of(m) for m in messages]

        def fn(tx: Tx) -> None:
            tx.executemany(_sql.insert(MESSAGES), rows)
            self._add_history(tx, [history_entry("sent", m) for m in messages])
            self._notify(tx, messages)

        self.db.write(fn)

    def load_sent(self, agent: str, limit: int = 100, before: str | None = None) -> list[dict]:
        def fn(tx: Tx) -> list[tuple]:
            params: list = [agent]
            where = "sender = ?"
            if before is not None:
                row = tx.fetchone("SELECT timestamp, id FROM messages WHERE id = ? AND sender = ?", (before, agent))
                if row is None:
                    raise ValidationError(f"before {before!r} is not the id of a message {agent} sent")
                where += " AND (timestamp, id) < (?, ?)"
                params += row
            return tx.fetchall(f"SELECT {_MSG_COLS}, read_at FROM messages WHERE {where} "
                               "ORDER BY timestamp DESC, id DESC LIMIT ?", (*params, limit))

        rows = self.db.read(fn) if limit > 0 else []
        return [{**_msg(r), "read_at": r[7]} for r in reversed(rows)]


def _kept_ids(text: str) -> list[str]:
    """The ids of an ``idempotency_keys`` row (validated when carried in); [] when it does not parse: the send goes ahead."""
    try:
        ids = json.loads(text)
    except ValueError:
        return []
    return [str(i) for i in ids] if isinstance(ids, list) else []
