"""The SQL store's messages: sending, the inbox, delivery with leases and acknowledgements, dead letters,
idempotent sends, what an agent sent (docs/delivery.md)."""

from __future__ import annotations

import json
import operator

from ..domain import clock as _clock
from . import sqltext as _sql
from .database import Tx
from ..domain.entities import MESSAGES, history_entry
from ..errors import ConflictError, ValidationError
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
# A receive's pick: the deliverable messages, oldest first -- those under max attempts, and expired leases
# at max attempts (due dead letters, which the lease marks dead instead of leasing); parameters: the
# recipient, now, max attempts, a limit.
_PICK = (f"SELECT id AS picked_id FROM messages WHERE recipient = ? AND {_DELIVERABLE} "
         "AND (attempt < ? OR lease_until IS NOT NULL) ORDER BY timestamp, id LIMIT ?")
# What the lease writes on a picked row (every right side reads the row as it was): attempt + 1 and the
# lease, or nothing for a row delivered max attempts already (a due dead letter: its lease_until stays
# the one that ended, which tells it apart); parameters: max attempts, max attempts, the lease's end.
_LEASE_SET = ("attempt = CASE WHEN attempt >= ? THEN attempt ELSE attempt + 1 END, "
              "lease_until = CASE WHEN attempt >= ? THEN lease_until ELSE ? END")
# ... and that row marked dead in the same statement, where the dialect's lease does (``lease_marks_dead``:
# on PostgreSQL a value left as it was keeps the update in place; SQLite rewrites the index entries of
# every column it sets, so it marks them in a second statement); more parameters: max attempts, now.
_LEASE_SET_DEAD = _LEASE_SET + ", dead_at = CASE WHEN attempt >= ? THEN ? END"
_MSG_MARKS = ", ".join("?" for _ in MESSAGES.columns)
_LEASE_RETURNING = f"{_MSG_COLS}, attempt, lease_until"

# Messages are ordered in Python by (timestamp, id), as the file side orders
# them, whatever the engine's collation would do with ORDER BY.
_BY_TIME = operator.itemgetter(MESSAGES.index("timestamp"), MESSAGES.index("id"))


class MessagesSql(SqlPart):
    """Messages and their delivery; history is recorded in the same transaction (``_add_history``)."""

    # -- messages -------------------------------------------------------------
    def save_message(self, message: dict) -> None:
        """One message, its history entry and its recipient's wake-up, atomically: one statement where the
        engine has one for it (PostgreSQL: one round trip), else one transaction.

        Sent again (a reply lost after the row landed, retried), it finds its row and writes nothing
        twice; an id already taken by another message is a ConflictError.
        """
        values = MESSAGES.row_of(message)
        send = self.db.dialect.send_sql
        if send is not None:
            sql = send.format(columns=_MSG_COLS, marks=_MSG_MARKS)
            written = bool(self.db.write_statement(lambda tx: tx.fetchall(sql, values)))
        else:
            def fn(tx: Tx) -> bool:
                if not tx.execute(_sql.insert(MESSAGES, "DO NOTHING"), values).rowcount:
                    return False
                self._add_history(tx, [history_entry("sent", message)])
                self._notify(tx, [message])
                return True

            written = self.db.write(fn)
        if not written:
            self._check_same_message(message["id"], values)

    def _check_same_message(self, message_id: str, values: tuple) -> None:
        """A send that wrote nothing found its id taken: fine if by this very message (a resent statement)."""
        row = self.db.fetchone(f"SELECT {_MSG_COLS} FROM messages WHERE id = ?", (message_id,))
        if row is None or tuple(row) != values:
            raise ConflictError(f"message id {message_id} is already used by another message")

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

        One ``UPDATE … RETURNING`` (PostgreSQL: one round trip, rows picked ``FOR UPDATE SKIP LOCKED`` in a
        CTE, so concurrent receivers take disjoint sets without waiting on each other).  An expired lease
        already delivered *max_attempts* times is picked in its turn, oldest first, and marked a dead letter
        instead of leased (by the same statement where the dialect's lease does, else by a second one in the
        same transaction); when that left the answer short of *limit*, the next statement takes the rest.  (A due dead letter beyond what a receive reaches is listed by
        :meth:`load_dead_letters` all the same, and marked when a receive reaches it.)  A lease changes no
        indexed column: on PostgreSQL it is a HOT update where the page has room (schema 7).
        *ids*: the shim mirroring the other side's lease leases exactly those, after marking every due dead
        letter of *agent*, as the file side does.
        Each message comes back with ``attempt`` (1 the first time) and ``lease_until``.
        """
        if ids is not None:
            return self._lease_ids(agent, lease_until, now, max_attempts, ids)
        dialect = self.db.dialect
        marks = dialect.lease_marks_dead
        sql = dialect.lease_sql.format(pick=_PICK, lease=_LEASE_SET_DEAD if marks else _LEASE_SET,
                                       deliverable=_DELIVERABLE, returning=_LEASE_RETURNING)
        lease = (max_attempts, max_attempts, lease_until) + ((max_attempts, now) if marks else ())
        out: list[tuple] = []
        while True:
            want = _NO_LIMIT if limit is None else limit - len(out)
            params = dialect.lease_params((agent, now, max_attempts, want), lease, now)
            if marks:
                # one statement, sent again after a lost connection: a lease that landed unheard only hides its
                # messages until it ends (then they come back, attempt + 1): at least once, as promised
                rows = self.db.write_statement(lambda tx: tx.fetchall(sql, params))
            else:
                def fn(tx: Tx) -> list[tuple]:
                    got = tx.fetchall(sql, params)
                    for chunk, marks_in in _chunks([r[0] for r in got if r[8] != lease_until]):
                        tx.execute(f"UPDATE messages SET dead_at = ? WHERE id {marks_in}", (now, *chunk))
                    return got

                rows = self.db.write(fn)
            live = [r for r in rows if r[8] == lease_until]  # a due dead letter kept the lease that ended
            out += live
            if len(live) == len(rows) or limit is None or len(out) >= limit:
                break  # nothing was marked dead, so nothing was left behind for its sake
        out.sort(key=_BY_TIME)
        return [{**_msg(r), "attempt": r[7], "lease_until": r[8]} for r in out]

    def _lease_ids(self, agent: str, lease_until: str, now: str, max_attempts: int, ids: list[str]) -> list[dict]:
        def fn(tx: Tx) -> list[tuple]:
            tx.execute(f"UPDATE messages SET dead_at = ? WHERE recipient = ? AND {_DUE_DEAD}",
                       (now, agent, now, max_attempts))
            rows = []
            for chunk, marks in _chunks(ids):
                rows += tx.fetchall(
                    f"UPDATE messages SET attempt = attempt + 1, lease_until = ? WHERE recipient = ? AND "
                    f"{_DELIVERABLE} AND attempt < ? AND id {marks} RETURNING {_MSG_COLS}, attempt, lease_until",
                    (lease_until, agent, now, max_attempts, *chunk))
            return rows

        rows = self.db.write(fn)
        rows.sort(key=_BY_TIME)
        return [{**_msg(r), "attempt": r[7], "lease_until": r[8]} for r in rows]

    def ack_messages(self, agent: str, ids: list[str], read_at: str) -> list[dict]:
        """Acknowledge delivered messages of *agent* among *ids*: read now (``read_at``), never delivered
        again; the messages acknowledged now, in the order of *ids*.

        One statement: the ids as one array where the engine has a statement for it (PostgreSQL: one
        round trip), else as ``IN (?, …)`` when they fit one (up to 500; more take several in one
        transaction).  Not idempotent (a second run acknowledges nothing): a lost connection is reported.
        """
        array = self.db.dialect.ack_sql
        if array is not None:
            sql = array.format(columns=_MSG_COLS)
            wanted = self.db.dialect.text_array(ids)
            rows = self.db.write_statement(lambda tx: tx.fetchall(sql, (wanted, agent, read_at)), idempotent=False)
        else:
            # "+recipient": not an index term -- SQLite's planner would walk the recipient's unread rows on
            # idx_messages_unread instead of looking the ids up by primary key
            sql = ("UPDATE messages SET read_at = ? WHERE id {marks} AND +recipient = ? AND read_at IS NULL "
                   f"AND attempt > 0 RETURNING {_MSG_COLS}")
            chunks = list(_chunks(ids))

            def fn(tx: Tx) -> list[tuple]:
                done: list[tuple] = []
                for chunk, marks in chunks:
                    done += tx.fetchall(sql.format(marks=marks), (read_at, *chunk, agent))
                return done

            rows = self.db.write_statement(fn, idempotent=False) if len(chunks) == 1 else self.db.write(fn)
        done = {r[0]: _msg(r) for r in rows}
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


def _chunks(ids: list[str], size: int = 500):
    """*ids* in chunks of at most *size*, each with its ``IN (?, …)``."""
    for start in range(0, len(ids), size):
        chunk = list(ids[start:start + size])
        yield chunk, f"IN ({', '.join('?' for _ in chunk)})"
