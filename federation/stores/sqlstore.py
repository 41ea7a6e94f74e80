"""The SQL store: the same functions as :mod:`federation.core`, on the schema.

Both implement the ``Store`` protocol (:mod:`federation.stores.protocol`): every method has the
name and signature of its ``core`` counterpart and
returns the same legacy shapes, so the shim can route a call to either side
by name.  Every write is one transaction that checks what it depends on
(poll open, option valid, session exists) and changes only its own rows, so
concurrent writers never erase each other.
"""

from __future__ import annotations

import json
import os
import operator
import threading
from pathlib import Path
from typing import Callable, TypeVar

from ..domain import clock as _clock
from . import sqltext as _sql
from .. import config
from .files import Tree, has_legacy_data
from .database import Database, Tx, get_db
from ..domain.entities import (ALL, CONTEXT, MESSAGE_HISTORY, MESSAGES, POLLS, PROFILES, SESSION_ARTIFACTS,
                               SESSION_REVIEWS, SESSION_ROLES, SESSIONS, VOTES, check_close, check_vote,
                               history_entry)
from ..errors import BackfillRequiredError, ConflictError, NotFoundError, ValidationError

T = TypeVar("T")

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
#: PostgreSQL: every send notifies this channel with the recipient's name (pulse(wait) listens).
NOTIFY_CHANNEL = "federation_inbox"

# One message sent in one statement (engines with writable CTEs): the row, its history entry, the
# recipient's wake-up (NOTIFY is transactional: sent at commit).  ON CONFLICT DO NOTHING makes the
# statement safe to send again after a lost connection; no row back means the id was there already.
_SEND_ONE = (
    f"WITH m AS (INSERT INTO messages ({_MSG_COLS}) VALUES ({', '.join('?' for _ in MESSAGES.columns)}) "
    f"ON CONFLICT (id) DO NOTHING RETURNING {_MSG_COLS}), "
    f"h AS (INSERT INTO message_history ({', '.join(MESSAGE_HISTORY.columns)}) "
    "SELECT 'sent', sender, recipient, content, message_type, timestamp, id FROM m) "
    "SELECT pg_notify(?, recipient) FROM m")

# An acknowledgement of an array of ids (engines with array parameters and writable CTEs): each id
# looked up by primary key and locked on its own (LATERAL ... LIMIT 1: one probe per id, and nothing
# but the id for the planner to choose an index by -- given "recipient = ?" and no statistics it took
# that for one row and read the recipient's whole inbox), its conditions checked on the locked, newest
# version, then those rows updated by primary key.  They stay locked until the UPDATE: it needs no
# condition of its own.
_ACK_ARRAY = (
    "WITH hit AS MATERIALIZED (SELECT x.id FROM unnest(CAST(? AS text[])) AS wanted(id) CROSS JOIN LATERAL "
    "(SELECT id, recipient, read_at, attempt FROM messages WHERE id = wanted.id LIMIT 1 FOR UPDATE) x "
    "WHERE x.recipient = ? AND x.read_at IS NULL AND x.attempt > 0) "
    f"UPDATE messages SET read_at = ? WHERE id = ANY(ARRAY(SELECT id FROM hit)) RETURNING {_MSG_COLS}")

# Messages are ordered in Python by (timestamp, id), as the file side orders
# them, whatever the engine's collation would do with ORDER BY.
_BY_TIME = operator.itemgetter(MESSAGES.index("timestamp"), MESSAGES.index("id"))


class SqlStore:
    """The federation's state in a SQL database (SQLite or PostgreSQL); a ``Store``."""

    def __init__(self, db: Database, root: Path):
        self.db = db
        self.tree = Tree(root)
        db.on_first_create(self._on_create)
        self._backfill_ok = False
        self._root_made = False

    def ensure_root(self) -> None:
        """Create the federation's root when it does not exist (once per store).

        A process that writes only the database (phase 4) still makes the root, where the control plane
        lives (the flag, the fleet's announcements): `doctor`, `status` and `rollout status` then operate
        a federation that has no legacy files.  Never again after the first call: a root removed later
        (a test's temporary folder, an unmounted disk) is not recreated by this.
        """
        if not self._root_made:
            os.makedirs(self.tree.root, exist_ok=True)
            self._root_made = True

    # -- lifecycle ------------------------------------------------------------
    def _on_create(self, tx: Tx) -> None:
        now = _clock.now()
        tx.execute("INSERT INTO federation_meta (key, value) VALUES ('created_at', ?)", (now,))
        if not has_legacy_data(self.tree):
            # a new federation: nothing to backfill, now or after its dual-writes create files
            tx.execute("INSERT INTO federation_meta (key, value) VALUES ('backfilled_at', ?)", (now,))
            tx.execute("INSERT INTO federation_meta (key, value) VALUES ('backfill_source', 'empty')")

    def meta(self, key: str) -> str | None:
        row = self.db.fetchone("SELECT value FROM federation_meta WHERE key = ?", (key,))
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        self.db.write(lambda tx: tx.execute(
            "INSERT INTO federation_meta (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value", (key, value)))

    def mark_backfilled(self, source: str = "migration") -> None:
        self.set_meta("backfilled_at", _clock.now())
        self.set_meta("backfill_source", source)

    def ensure_backfilled(self) -> None:
        """Refuse (phases 3-4) to serve a database that never received the legacy files."""
        if self._backfill_ok:
            return
        if self.meta("backfilled_at") is None and has_legacy_data(self.tree):
            raise BackfillRequiredError(
                f"the database {self.db.dialect.describe()} was never backfilled from the legacy files "
                f"under {self.tree.root}; serving reads from it would show agents an empty federation. "
                "`federation rollout set 1` serves the files meanwhile (every unpinned process follows it "
                "within seconds); then run `federation migrate`. A process pinned to phase 3 or 4 by its "
                "environment (FEDERATION_PHASE) needs that pin removed or set to 2 until the migration is done."
            )
        self._backfill_ok = True

    def atomic(self, fn: Callable[[], T]) -> T:
        """Run *fn* (which calls methods of this store) in one write transaction."""
        return self.db.write(lambda tx: fn(), snapshot=True)

    def counts(self) -> dict[str, int]:
        def fn(tx: Tx) -> dict[str, int]:
            return {e.table: int(tx.fetchone(_sql.select(e, what="COUNT(*)"))[0]) for e in ALL}

        return self.db.read(fn)

    # -- messages -------------------------------------------------------------
    def save_message(self, message: dict) -> None:
        """One message, its history entry and (PostgreSQL) the recipient's wake-up, atomically.

        Where the engine allows (PostgreSQL), one statement: one round trip, no BEGIN/COMMIT.  The id
        is the sender's (a fresh uuid), so a statement sent again after a lost connection finds its
        row and writes nothing twice; an id already used by another message is a ConflictError.
        """
        values = MESSAGES.row_of(message)
        if self.db.dialect.writable_cte:
            written = bool(self.db.write_statement(lambda tx: tx.fetchall(_SEND_ONE, (*values, NOTIFY_CHANNEL))))
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

        One transaction: expired leases already delivered *max_attempts* times
        become dead letters, then one ``UPDATE … RETURNING`` leases the oldest
        rest (PostgreSQL: picked ``FOR UPDATE SKIP LOCKED`` in a CTE, so
        concurrent receivers take disjoint sets without waiting on each other).
        *ids*: the shim mirroring the other side's lease leases exactly those.
        Each message comes back with ``attempt`` (1 the first time) and ``lease_until``.
        """
        pick = (f"SELECT id AS picked_id FROM messages WHERE recipient = ? AND {_DELIVERABLE} AND attempt < ? "
                f"ORDER BY timestamp, id LIMIT ?")
        take = (agent, now, max_attempts, _NO_LIMIT if limit is None else limit)
        if ids is None and self.db.dialect.writable_cte:
            # PostgreSQL: one statement, one round trip -- the due dead letters marked (rows at max attempts,
            # never picked) and the oldest deliverable rows leased.  The chosen rows are locked once (a
            # MATERIALIZED CTE joined by primary key, not an IN subquery the planner may re-run per row);
            # rows another receiver holds are skipped, not waited for.  FOR UPDATE re-checks the conditions
            # on the newest version of a row it locks, so the UPDATE itself needs none.
            sql = (f"WITH dead AS (UPDATE messages SET dead_at = ? WHERE recipient = ? AND {_DUE_DEAD}), "
                   f"picked AS MATERIALIZED ({pick} FOR UPDATE SKIP LOCKED) "
                   "UPDATE messages SET attempt = messages.attempt + 1, lease_until = ? FROM picked "
                   "WHERE messages.id = picked.picked_id "
                   f"RETURNING {_MSG_COLS_OF_MESSAGES}, messages.attempt, messages.lease_until")
            # not idempotent (a second run leases more): a connection lost meanwhile is reported, not retried
            rows = self.db.write_statement(
                lambda tx: tx.fetchall(sql, (now, agent, now, max_attempts, *take, lease_until)), idempotent=False)
        else:
            # SQLite: writers are serial; the subquery is evaluated once
            sql = (f"UPDATE messages SET attempt = attempt + 1, lease_until = ? WHERE id IN ({pick}) "
                   f"AND {_DELIVERABLE} RETURNING {_MSG_COLS}, attempt, lease_until")

            def fn(tx: Tx) -> list[tuple]:
                tx.execute(f"UPDATE messages SET dead_at = ? WHERE recipient = ? AND {_DUE_DEAD}",
                           (now, agent, now, max_attempts))
                if ids is None:
                    return tx.fetchall(sql, (lease_until, *take, now))
                rows = []  # the shim mirroring the other side's lease: exactly those messages
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

        One statement: the ids as one array (PostgreSQL: one round trip), or as ``IN (?, ...)`` when
        they fit one (up to 500; more take several in one transaction)."""
        if self.db.dialect.array_params:
            # not idempotent (a second run acknowledges nothing): a connection lost meanwhile is reported
            rows = self.db.write_statement(lambda tx: tx.fetchall(_ACK_ARRAY, (list(ids), agent, read_at)),
                                           idempotent=False)
        else:
            # "+recipient": not an index term (SQLite's planner would walk the recipient's unread rows on
            # idx_messages_unread instead of looking the ids up by primary key)
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

    def save_history(self, direction: str, messages: list[dict]) -> None:
        """Nothing to do: the database records history in the transaction of the message itself."""

    def _notify(self, tx: Tx, messages: list[dict]) -> None:
        """PostgreSQL: wake the recipients' pulse(wait) at commit (NOTIFY is transactional)."""
        if self.db.dialect.name == "postgresql":
            for recipient in sorted({m["recipient"] for m in messages}):
                tx.execute("SELECT pg_notify(?, ?)", (NOTIFY_CHANNEL, recipient))

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

    # -- context, expertise, profiles ----------------------------------------
    def load_context(self, agent: str) -> dict | None:
        row = self.db.fetchone(_sql.select(CONTEXT, "agent = ?"), (agent,))
        return None if row is None else CONTEXT.from_row(row)

    def save_context(self, agent: str, text: str, updated_at: str) -> None:
        self.db.write(lambda tx: tx.execute(
            "INSERT INTO context (agent, text, updated_at) VALUES (?, ?, ?) ON CONFLICT (agent) DO UPDATE "
            "SET text = excluded.text, updated_at = excluded.updated_at", (agent, text, updated_at)))

    def save_heartbeat(self, agent: str, timestamp: str) -> None:
        self.db.write(lambda tx: tx.execute(
            "INSERT INTO context (agent, text, last_heartbeat) VALUES (?, '', ?) ON CONFLICT (agent) DO UPDATE "
            "SET last_heartbeat = excluded.last_heartbeat", (agent, timestamp)))

    def load_expertise(self, agent: str) -> dict | None:
        rows = self.db.fetchall(
            "SELECT domain, updated_at FROM expertise WHERE agent = ?", (agent,))
        if not rows:
            return None
        return {"agent": agent, "domains": sorted(r[0] for r in rows), "updated_at": max(r[1] or "" for r in rows)
                or None}

    def save_expertise(self, agent: str, domains: list[str], updated_at: str) -> None:
        def fn(tx: Tx) -> None:
            # a set of rows replaced as a whole: concurrent replacements must not interleave
            tx.dialect.lock(tx, f"expertise:{agent}")
            tx.execute("DELETE FROM expertise WHERE agent = ?", (agent,))
            tx.executemany("INSERT INTO expertise (agent, domain, updated_at) VALUES (?, ?, ?)",
                           [(agent, d, updated_at) for d in domains])

        self.db.write(fn)

    def load_profile(self, agent: str) -> dict | None:
        row = self.db.fetchone(_sql.select(PROFILES, "agent = ?"), (agent,))
        return None if row is None else PROFILES.from_row(row)

    def save_profile(self, agent: str, default_role: str | None, traits: dict | None, updated_at: str) -> None:
        encoded = None if traits is None else PROFILES.field("traits").encode(traits)
        self.db.write(lambda tx: tx.execute(
            "INSERT INTO profiles (agent, default_role, traits, updated_at) VALUES (?, ?, COALESCE(CAST(? AS TEXT), '{}'), ?) "
            "ON CONFLICT (agent) DO UPDATE SET "
            "default_role = COALESCE(excluded.default_role, profiles.default_role), "
            "traits = CASE WHEN CAST(? AS TEXT) IS NULL THEN profiles.traits ELSE excluded.traits END, "
            "updated_at = excluded.updated_at",
            (agent, default_role, encoded, updated_at, encoded)))

    def load_experts(self, domain: str) -> list[str]:
        rows = self.db.fetchall("SELECT agent FROM expertise WHERE domain = ?", (domain,))
        return sorted(r[0] for r in rows)

    # -- polls ----------------------------------------------------------------
    @staticmethod
    def _poll(row: tuple, votes: dict[str, str]) -> dict:
        return {**POLLS.from_row(row), "votes": votes}

    def load_polls(self) -> dict[str, dict]:
        def fn(tx: Tx) -> dict[str, dict]:
            polls = tx.fetchall(_sql.select(POLLS) + " ORDER BY id")
            votes: dict[str, dict[str, str]] = {}
            for pid, voter, option in tx.fetchall(_sql.select(VOTES)):
                votes.setdefault(pid, {})[voter] = option
            return {r[0]: self._poll(r, votes.get(r[0], {})) for r in polls}

        return self.db.read(fn)

    def load_poll(self, poll_id: str) -> dict | None:
        def fn(tx: Tx) -> dict | None:
            row = tx.fetchone(_sql.select(POLLS, "id = ?"), (poll_id,))
            if row is None:
                return None
            votes = dict(tx.fetchall("SELECT voter, option FROM votes WHERE poll_id = ?", (poll_id,)))
            return self._poll(row, votes)

        return self.db.read(fn)

    def _write_poll(self, tx: Tx, poll: dict, *, create: bool) -> None:
        values = POLLS.row_of(poll)
        votes = dict(poll.get("votes") or {})
        if create:
            if tx.fetchone("SELECT 1 FROM polls WHERE id = ?", (poll["id"],)):
                raise ConflictError(f"poll {poll['id']} already exists")
            tx.execute(_sql.insert(POLLS), values)
            stored: dict[str, str] = {}
        else:
            tx.execute(_sql.upsert(POLLS), values)
            stored = dict(tx.fetchall("SELECT voter, option FROM votes WHERE poll_id = ?", (poll["id"],)))
            gone = [(poll["id"], voter) for voter in stored if voter not in votes]
            if gone:
                tx.executemany("DELETE FROM votes WHERE poll_id = ? AND voter = ?", gone)
        changed = [(poll["id"], voter, option, poll.get("created_at"))
                   for voter, option in votes.items() if stored.get(voter) != option]
        if changed:
            tx.executemany("INSERT INTO votes (poll_id, voter, option, voted_at) VALUES (?, ?, ?, ?) "
                           "ON CONFLICT (poll_id, voter) DO UPDATE SET option = excluded.option", changed)

    def save_poll(self, poll: dict) -> None:
        self.db.write(lambda tx: self._write_poll(tx, poll, create=True))

    def save_polls(self, polls: dict[str, dict]) -> None:
        """Make the stored polls equal *polls*: the whole document, as the file side writes it.

        Through the shim, *polls* is the current state with this caller's delta
        applied, inside one transaction, so only what changed is written.
        """
        def fn(tx: Tx) -> None:
            existing = {r[0] for r in tx.fetchall("SELECT id FROM polls")}
            for poll_id in existing - set(polls):
                tx.execute("DELETE FROM votes WHERE poll_id = ?", (poll_id,))
                tx.execute("DELETE FROM polls WHERE id = ?", (poll_id,))
            for poll in polls.values():
                self._write_poll(tx, poll, create=False)

        self.db.write(fn)

    def save_vote(self, poll_id: str, voter: str, option: str, voted_at: str) -> None:
        """One statement (one round trip on PostgreSQL): the upsert happens only if the poll is open
        and the option valid; the poll row is locked FOR SHARE, so a close waits for the vote or the
        vote sees the close.  Why a vote was refused is looked up only when it was."""
        dialect = self.db.dialect
        sql = ("INSERT INTO votes (poll_id, voter, option, voted_at) SELECT id, ?, ?, ? FROM polls "
               "WHERE id = ? AND COALESCE(status, 'open') = 'open' AND "
               f"{dialect.json_array_has.format(options='polls.options')}{dialect.for_share} "
               "ON CONFLICT (poll_id, voter) DO UPDATE SET option = excluded.option, voted_at = excluded.voted_at "
               "RETURNING poll_id")
        landed = self.db.write_statement(
            lambda tx: tx.fetchall(sql, (voter, option, voted_at, poll_id, option)))  # an upsert: safe to rerun
        if landed:
            return
        row = self.db.fetchone("SELECT status, options FROM polls WHERE id = ?", (poll_id,))
        poll = None if row is None else {"status": row[0], "options": json.loads(row[1])}
        check_vote(poll, poll_id, option)
        raise ConflictError(f"the vote on poll {poll_id} was not recorded; try again")

    def save_poll_status(self, poll_id: str, agent: str, status: str) -> None:
        def fn(tx: Tx) -> None:
            row = tx.fetchone(f"SELECT creator, status FROM polls WHERE id = ?{tx.dialect.for_update}", (poll_id,))
            poll = None if row is None else {"creator": row[0], "status": row[1]}
            if check_close(poll, poll_id, agent):
                tx.execute("UPDATE polls SET status = ? WHERE id = ?", (status, poll_id))

        self.db.write(fn)

    # -- sessions -------------------------------------------------------------
    def _sessions(self, tx: Tx, session_id: str | None) -> dict[str, dict]:
        return self._sessions_where(tx, "= ?" if session_id else None, (session_id,) if session_id else ())

    def _sessions_in(self, tx: Tx, ids: list[str]) -> dict[str, dict]:
        if not ids:
            return {}
        return self._sessions_where(tx, f"IN ({', '.join('?' for _ in ids)})", tuple(ids))

    @staticmethod
    def _sessions_where(tx: Tx, match: str | None, params: tuple) -> dict[str, dict]:
        """The sessions whose id matches *match* (``"= ?"``, ``"IN (?, ...)"``; None: all), with their parts."""
        out: dict[str, dict] = {}
        for row in tx.fetchall(_sql.select(SESSIONS, f"id {match}" if match else "") + " ORDER BY id", params):
            session = out[row[0]] = SESSIONS.from_row(row)
            for part in _SESSION_PARTS:
                session[part.container] = {}
        for part in _SESSION_PARTS:
            # a nested record: {key: {key: ... {field: value}}} under the session's part.container
            depth = part.key
            for row in tx.fetchall(_sql.select(part, f"session_id {match}" if match else ""), params):
                session = out.get(row[0])
                if session is None:
                    continue
                slot = session[part.container]
                for k in row[1:depth - 1]:
                    slot = slot.setdefault(k, {})
                slot[row[depth - 1]] = dict(zip(part.columns[depth:], row[depth:]))
        return out

    def load_sessions(self) -> dict[str, dict]:
        return self.db.read(lambda tx: self._sessions(tx, None))

    def load_session(self, session_id: str) -> dict | None:
        return self.db.read(lambda tx: self._sessions(tx, session_id).get(session_id))

    def save_session(self, session: dict) -> None:
        def fn(tx: Tx) -> None:
            if tx.fetchone("SELECT 1 FROM sessions WHERE id = ?", (session["id"],)):
                raise ConflictError(f"session {session['id']} already exists")
            tx.execute(_sql.insert(SESSIONS), SESSIONS.row_of(session))

        self.db.write(fn)

    def _touch_session(self, tx: Tx, session_id: str, updated_at: str) -> None:
        if not tx.fetchone(f"SELECT 1 FROM sessions WHERE id = ?{tx.dialect.for_update}", (session_id,)):
            raise NotFoundError(f"session {session_id} does not exist")
        tx.execute("UPDATE sessions SET updated_at = ? WHERE id = ?", (updated_at, session_id))

    def save_role(self, session_id: str, agent: str, role: str, subtask: str | None, assigned_at: str) -> None:
        def fn(tx: Tx) -> None:
            self._touch_session(tx, session_id, assigned_at)
            tx.execute(_sql.upsert(SESSION_ROLES), (session_id, agent, role, subtask, assigned_at))

        self.db.write(fn)

    def save_artifact(self, session_id: str, artifact_type: str, path: str, attached_at: str) -> None:
        def fn(tx: Tx) -> None:
            self._touch_session(tx, session_id, attached_at)
            tx.execute(_sql.upsert(SESSION_ARTIFACTS), (session_id, artifact_type, path, attached_at))

        self.db.write(fn)

    def save_review(self, session_id: str, artifact_type: str, reviewer: str, status: str,
                    comments: str | None, reviewed_at: str) -> None:
        def fn(tx: Tx) -> None:
            self._touch_session(tx, session_id, reviewed_at)
            if not tx.fetchone("SELECT 1 FROM session_artifacts WHERE session_id = ? AND artifact_type = ?",
                               (session_id, artifact_type)):
                raise NotFoundError(f"session {session_id} has no artifact of type {artifact_type!r}")
            tx.execute(_sql.upsert(SESSION_REVIEWS),
                       (session_id, artifact_type, reviewer, status, comments, reviewed_at))

        self.db.write(fn)

    def save_session_phase(self, session_id: str, phase: str, updated_at: str) -> None:
        def fn(tx: Tx) -> None:
            self._touch_session(tx, session_id, updated_at)
            tx.execute("UPDATE sessions SET phase = ? WHERE id = ?", (phase, session_id))

        self.db.write(fn)

    # -- what an agent reads every tick (issue 11): indexed, cost proportional to the answer ---------
    _POLL_COLS = _sql.columns(POLLS)

    def _polls_with_votes(self, tx: Tx, rows: list[tuple]) -> list[dict]:
        votes: dict[str, dict[str, str]] = {}
        ids = [r[0] for r in rows]
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            marks = ", ".join("?" for _ in chunk)
            for pid, voter, option in tx.fetchall(
                    f"SELECT poll_id, voter, option FROM votes WHERE poll_id IN ({marks})", chunk):
                votes.setdefault(pid, {})[voter] = option
        return [self._poll(r, votes.get(r[0], {})) for r in rows]

    @staticmethod
    def _position(tx: Tx, table: str, after: str | None, what: str) -> tuple | None:
        """``(created_at, id)`` of the record *after* (the last of the previous page)."""
        if after is None:
            return None
        row = tx.fetchone(f"SELECT created_at, id FROM {table} WHERE id = ?", (after,))
        if row is None:
            raise ValidationError(f"after {after!r} is not the id of a {what}: page from the start (after=None)")
        return row

    def load_polls_page(self, status: str | None = None, limit: int | None = None,
                        after: str | None = None) -> list[dict]:
        def fn(tx: Tx) -> list[dict]:
            where, params = [], []
            if status is not None:
                where.append("status = ?")
                params.append(status)
            position = self._position(tx, "polls", after, "poll")
            if position is not None:
                where.append("(created_at, id) > (?, ?)")
                params += position
            sql = f"SELECT {self._POLL_COLS} FROM polls"
            if where:
                sql += " WHERE " + " AND ".join(where)
            sql += " ORDER BY created_at, id"
            if limit is not None:
                sql += " LIMIT ?"
                params.append(limit)
            return self._polls_with_votes(tx, tx.fetchall(sql, params))

        return self.db.read(fn)

    def load_open_polls(self, agent: str, limit: int) -> list[dict]:
        def fn(tx: Tx) -> list[dict]:
            rows = tx.fetchall(
                f"SELECT {self._POLL_COLS} FROM polls p WHERE status = 'open' AND NOT EXISTS "
                "(SELECT 1 FROM votes v WHERE v.poll_id = p.id AND v.voter = ?) ORDER BY created_at, id LIMIT ?",
                (agent, limit))
            return self._polls_with_votes(tx, rows)

        return self.db.read(fn)

    def load_sessions_page(self, limit: int | None = None, after: str | None = None) -> list[dict]:
        def fn(tx: Tx) -> list[dict]:
            params: list = []
            sql = "SELECT id FROM sessions"
            position = self._position(tx, "sessions", after, "session")
            if position is not None:
                sql += " WHERE (created_at, id) > (?, ?)"
                params += position
            sql += " ORDER BY created_at, id"
            if limit is not None:
                sql += " LIMIT ?"
                params.append(limit)
            ids = [r[0] for r in tx.fetchall(sql, params)]
            found: dict[str, dict] = {}
            for start in range(0, len(ids), 500):
                found.update(self._sessions_in(tx, ids[start:start + 500]))
            return [found[i] for i in ids if i in found]

        return self.db.read(fn)

    def load_roles(self, agent: str) -> list[dict]:
        rows = self.db.fetchall(
            "SELECT r.session_id, s.title, r.role, r.subtask FROM session_roles r "
            "JOIN sessions s ON s.id = r.session_id WHERE r.agent = ? ORDER BY s.created_at, s.id", (agent,))
        return [{"session_id": r[0], "title": r[1], "role": r[2], "subtask": r[3]} for r in rows]

    # Every agent that received a message, without reading every message: a
    # "loose index scan" that jumps from one recipient to the next on the
    # recipient index (as many index look-ups as there are recipients).
    _KNOWN_AGENTS = (
        "WITH RECURSIVE r(name) AS ("
        "SELECT MIN(recipient) FROM messages UNION ALL "
        "SELECT (SELECT MIN(recipient) FROM messages WHERE recipient > r.name) FROM r WHERE r.name IS NOT NULL), "
        "known(agent) AS (SELECT name FROM r WHERE name IS NOT NULL UNION SELECT agent FROM context "
        "UNION SELECT agent FROM expertise UNION SELECT agent FROM profiles) ")

    def load_agents(self) -> list[str]:
        return sorted(r[0] for r in self.db.fetchall(self._KNOWN_AGENTS + "SELECT agent FROM known"))

    def load_agent_states(self) -> list[dict]:
        rows = self.db.fetchall(self._KNOWN_AGENTS + "SELECT k.agent, c.text, c.last_heartbeat, c.agent "
                                "FROM known k LEFT JOIN context c ON c.agent = k.agent")
        rows.sort(key=operator.itemgetter(0))
        return [{"agent": a, "text": (text or "") if has else None, "last_heartbeat": beat}
                for a, text, beat, has in rows]

    def load_agents_by_role(self, role: str) -> list[str]:
        return sorted(r[0] for r in self.db.fetchall("SELECT agent FROM profiles WHERE default_role = ?", (role,)))

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


_SESSION_PARTS = (SESSION_ROLES, SESSION_ARTIFACTS, SESSION_REVIEWS)

_stores: dict[tuple, SqlStore] = {}
_last: tuple | None = None
_stores_lock = threading.Lock()


def get_store(settings: config.Settings | None = None) -> SqlStore:
    """The SQL store of the configured database and root (one per process)."""
    global _last
    s = settings or config.settings()
    last = _last
    if last is not None and last[0] is s:  # the hot path: same settings object as the last call
        return last[1]
    key = (s.db_url or str(s.db_path), str(s.root))
    store = _stores.get(key)
    if store is None:
        with _stores_lock:
            store = _stores.get(key)
            if store is None:
                store = _stores[key] = SqlStore(get_db(s), s.root)
    _last = (s, store)
    return store


def forget_stores() -> None:
    from .database import forget_databases

    global _last
    with _stores_lock:
        _stores.clear()
        _last = None
    forget_databases()


def _kept_ids(text: str) -> list[str]:
    """The ids of an ``idempotency_keys`` row (validated when carried in); [] when it does not parse: the send goes ahead."""
    try:
        ids = json.loads(text)
    except ValueError:
        return []
    return [str(i) for i in ids] if isinstance(ids, list) else []


def _chunks(ids: list[str], size: int = 500):
    """*ids* in chunks of at most *size*, each with its ``IN (?, ...)``."""
    for start in range(0, len(ids), size):
        chunk = list(ids[start:start + size])
        yield chunk, f"IN ({', '.join('?' for _ in chunk)})"
