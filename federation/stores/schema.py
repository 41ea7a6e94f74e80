"""The database schema, as versioned migrations shared by every engine.

The DDL is the migration plan's, written once; ``{id_pk}`` is the one place
where the engines differ (an auto-increment key).  A new schema change is a
new entry in ``MIGRATIONS``; ``schema_version`` records what was applied.
"""

from __future__ import annotations

import re

_V1 = [
    """CREATE TABLE IF NOT EXISTS messages (
        id TEXT PRIMARY KEY,
        recipient TEXT NOT NULL,
        sender TEXT NOT NULL,
        content TEXT NOT NULL,
        message_type TEXT DEFAULT 'task',
        reply_to TEXT,
        timestamp TEXT NOT NULL,
        read_at TEXT,
        created_at TEXT DEFAULT CURRENT_TIMESTAMP
    )""",
    "CREATE INDEX IF NOT EXISTS idx_messages_recipient ON messages(recipient)",
    "CREATE INDEX IF NOT EXISTS idx_messages_unread ON messages(recipient, read_at) WHERE read_at IS NULL",
    """CREATE TABLE IF NOT EXISTS context (
        agent TEXT PRIMARY KEY,
        text TEXT DEFAULT '',
        last_heartbeat TEXT,
        updated_at TEXT
    )""",
    """CREATE TABLE IF NOT EXISTS expertise (
        agent TEXT NOT NULL,
        domain TEXT NOT NULL,
        updated_at TEXT,
        PRIMARY KEY (agent, domain)
    )""",
    "CREATE INDEX IF NOT EXISTS idx_expertise_domain ON expertise(domain)",
    """CREATE TABLE IF NOT EXISTS profiles (
        agent TEXT PRIMARY KEY,
        default_role TEXT,
        traits TEXT,
        updated_at TEXT
    )""",
    """CREATE TABLE IF NOT EXISTS polls (
        id TEXT PRIMARY KEY,
        question TEXT NOT NULL,
        options TEXT NOT NULL,
        status TEXT DEFAULT 'open',
        creator TEXT NOT NULL,
        created_at TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS votes (
        poll_id TEXT NOT NULL,
        voter TEXT NOT NULL,
        option TEXT NOT NULL,
        voted_at TEXT DEFAULT CURRENT_TIMESTAMP,
        PRIMARY KEY (poll_id, voter),
        FOREIGN KEY (poll_id) REFERENCES polls(id)
    )""",
    """CREATE TABLE IF NOT EXISTS sessions (
        id TEXT PRIMARY KEY,
        title TEXT NOT NULL,
        description TEXT,
        lead TEXT NOT NULL,
        phase TEXT DEFAULT 'planning',
        created_at TEXT NOT NULL,
        updated_at TEXT
    )""",
    """CREATE TABLE IF NOT EXISTS session_roles (
        session_id TEXT NOT NULL,
        agent TEXT NOT NULL,
        role TEXT NOT NULL,
        subtask TEXT,
        assigned_at TEXT DEFAULT CURRENT_TIMESTAMP,
        PRIMARY KEY (session_id, agent),
        FOREIGN KEY (session_id) REFERENCES sessions(id)
    )""",
    """CREATE TABLE IF NOT EXISTS session_artifacts (
        session_id TEXT NOT NULL,
        artifact_type TEXT NOT NULL,
        path TEXT NOT NULL,
        attached_at TEXT DEFAULT CURRENT_TIMESTAMP,
        PRIMARY KEY (session_id, artifact_type),
        FOREIGN KEY (session_id) REFERENCES sessions(id)
    )""",
    """CREATE TABLE IF NOT EXISTS session_reviews (
        session_id TEXT NOT NULL,
        artifact_type TEXT NOT NULL,
        reviewer TEXT NOT NULL,
        status TEXT,
        comments TEXT,
        reviewed_at TEXT,
        PRIMARY KEY (session_id, artifact_type, reviewer),
        FOREIGN KEY (session_id) REFERENCES sessions(id)
    )""",
    """CREATE TABLE IF NOT EXISTS message_history (
        id {id_pk},
        direction TEXT NOT NULL,
        sender TEXT NOT NULL,
        recipient TEXT NOT NULL,
        content TEXT NOT NULL,
        message_type TEXT,
        timestamp TEXT NOT NULL,
        message_id TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS idx_history_sender ON message_history(sender)",
    "CREATE INDEX IF NOT EXISTS idx_history_recipient ON message_history(recipient)",
    """CREATE TABLE IF NOT EXISTS federation_meta (
        key TEXT PRIMARY KEY,
        value TEXT
    )""",
]

# Version 2: the reads an agent makes every tick as indexed queries whose
# cost follows the answer, not the database (issue 11).
_V2 = [
    # list_polls / list_sessions pages and pulse's open polls, in creation order (keyset paging)
    "CREATE INDEX IF NOT EXISTS idx_polls_created ON polls(created_at, id)",
    "CREATE INDEX IF NOT EXISTS idx_polls_status_created ON polls(status, created_at, id)",
    "CREATE INDEX IF NOT EXISTS idx_sessions_created ON sessions(created_at, id)",
    # pulse's session roles; broadcast to a role
    "CREATE INDEX IF NOT EXISTS idx_session_roles_agent ON session_roles(agent)",
    "CREATE INDEX IF NOT EXISTS idx_profiles_role ON profiles(default_role)",
    # one agent's newest history entries and sent messages (receipts)
    "CREATE INDEX IF NOT EXISTS idx_history_sender_time ON message_history(sender, timestamp, id)",
    "CREATE INDEX IF NOT EXISTS idx_history_recipient_time ON message_history(recipient, timestamp, id)",
    "CREATE INDEX IF NOT EXISTS idx_history_message ON message_history(message_id)",
    "DROP INDEX IF EXISTS idx_history_sender",  # prefixes of the two above
    "DROP INDEX IF EXISTS idx_history_recipient",
    "CREATE INDEX IF NOT EXISTS idx_messages_sender_time ON messages(sender, timestamp, id)",
    "CREATE INDEX IF NOT EXISTS idx_messages_read_recipient ON messages(recipient, read_at, timestamp, id) "
    "WHERE read_at IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS idx_messages_read_sender ON messages(sender, read_at, timestamp, id) "
    "WHERE read_at IS NOT NULL",
]

# Version 3: delivery with leases and acknowledgements (issue 19, docs/delivery.md).
# A message is new while read_at, lease_until and dead_at are all NULL; leased
# while lease_until is set (taken back once it has passed); acknowledged when
# read_at is set; a dead letter when dead_at is set (delivered the maximum
# number of attempts, never acknowledged).  idempotency_key: the sender's key
# of an idempotent send, kept as long as the message row.
_V3 = [
    "ALTER TABLE messages ADD COLUMN IF NOT EXISTS attempt INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE messages ADD COLUMN IF NOT EXISTS lease_until TEXT",
    "ALTER TABLE messages ADD COLUMN IF NOT EXISTS dead_at TEXT",
    "ALTER TABLE messages ADD COLUMN IF NOT EXISTS idempotency_key TEXT",
    # receive: the deliverable messages of one recipient, oldest first
    "CREATE INDEX IF NOT EXISTS idx_messages_deliverable ON messages(recipient, timestamp, id) "
    "WHERE read_at IS NULL AND dead_at IS NULL",
    "CREATE INDEX IF NOT EXISTS idx_messages_dead ON messages(recipient, dead_at) WHERE dead_at IS NOT NULL",
    # one key of one sender names one send (a broadcast: one message per recipient)
    "CREATE UNIQUE INDEX IF NOT EXISTS idx_messages_idempotency ON messages(sender, idempotency_key, recipient) "
    "WHERE idempotency_key IS NOT NULL",
]

# Version 4: idempotency keys that outlive their message's row (issue 29).  A key is found on its
# messages' rows while they exist; a key carried in from the legacy files (``migrate``, ``sync --to db``)
# whose messages were already read there -- no row -- is kept here, so the same (sender, key) keeps
# naming its first send across every move.  ids and recipients: JSON lists, in the same order.
_V4 = [
    """CREATE TABLE IF NOT EXISTS idempotency_keys (
        sender TEXT NOT NULL,
        idempotency_key TEXT NOT NULL,
        ids TEXT NOT NULL,
        recipients TEXT NOT NULL,
        created_at TEXT NOT NULL,
        PRIMARY KEY (sender, idempotency_key)
    )""",
    "CREATE INDEX IF NOT EXISTS idx_idempotency_keys_created ON idempotency_keys(created_at)",
]

# Version 5: the task registry (issue 28, docs/tasks.md).  depends_on: a JSON list of task ids;
# result and payload: any JSON value (NULL: none).  A claim is status 'claimed' with claimed_by and
# lease_until; a claim whose lease ended is open again (the next claim takes attempt + 1).
_V5 = [
    """CREATE TABLE IF NOT EXISTS tasks (
        id TEXT PRIMARY KEY,
        title TEXT NOT NULL,
        description TEXT,
        creator TEXT NOT NULL,
        assignee TEXT,
        depends_on TEXT NOT NULL DEFAULT '[]',
        status TEXT NOT NULL DEFAULT 'open',
        claimed_by TEXT,
        lease_until TEXT,
        attempt INTEGER NOT NULL DEFAULT 0,
        result TEXT,
        payload TEXT,
        created_at TEXT NOT NULL,
        updated_at TEXT
    )""",
    # claim: the oldest takeable tasks; list_tasks pages (by status, by assignee)
    "CREATE INDEX IF NOT EXISTS idx_tasks_status_created ON tasks(status, created_at, id)",
    "CREATE INDEX IF NOT EXISTS idx_tasks_created ON tasks(created_at, id)",
    "CREATE INDEX IF NOT EXISTS idx_tasks_assignee_created ON tasks(assignee, created_at, id)",
]

# Version 6: delivery at the queue's speed (issue 27).  receive marks the recipient's due dead letters
# first; without an index on the leased rows that sweep read every unread message of the recipient,
# on every receive.  It reads only the leased ones now, by lease end.
_V6 = [
    "CREATE INDEX IF NOT EXISTS idx_messages_leased ON messages(recipient, lease_until) "
    "WHERE read_at IS NULL AND dead_at IS NULL AND lease_until IS NOT NULL",
]

# Version 7: a lease that writes no index entry (issue 27).  A receive no longer sweeps the recipient's due dead
# letters first: its pick takes them in their turn and marks them dead instead of leasing them (the statement
# that leases marks, sql_messages.lease_inbox), so nothing reads the leased rows by lease end and their index
# goes.  With no index on a column a lease changes (attempt, lease_until), a lease rewrites the row in place
# on PostgreSQL (a HOT update: no entry in any of the table's indexes) where its page has room.  (A lower
# fillfactor would leave that room on every page; it made one-per-call sends 15-25 % slower: not taken.)
_V7 = [
    "DROP INDEX IF EXISTS idx_messages_leased",
]

#: ``ALTER TABLE t ADD COLUMN IF NOT EXISTS c …``: SQLite lacks the IF NOT EXISTS, so the upgrade
#: checks the column itself (a version re-applied after a manual downgrade must not fail).
ADD_COLUMN = re.compile(r"ALTER TABLE (\w+) ADD COLUMN IF NOT EXISTS (\w+) (.*)", re.S)

#: (version, statements) in order; applied inside one transaction each.
MIGRATIONS: list[tuple[int, list[str]]] = [(1, _V1), (2, _V2), (3, _V3), (4, _V4), (5, _V5), (6, _V6), (7, _V7)]
LATEST = MIGRATIONS[-1][0]

#: The tables that are bookkeeping, not the federation's state (no legacy document, no entity).
BOOKKEEPING = ("federation_meta", "idempotency_keys")
#: The tables of the federation's state, as the migrations create them (not the bookkeeping tables).
TABLES = tuple(name for _, statements in MIGRATIONS for s in statements
               for name in re.findall(r"CREATE TABLE IF NOT EXISTS (\w+)", s) if name not in BOOKKEEPING)

SCHEMA_VERSION_DDL = """CREATE TABLE IF NOT EXISTS schema_version (
    version INTEGER PRIMARY KEY,
    applied_at TEXT NOT NULL
)"""
