"""The entities of the federation's state, each described once.

Every layer reads its knowledge of an entity from here: the file store
(:mod:`federation.core`), the SQL store (:mod:`federation.stores.sqlstore`), the
row/transfer layer (:mod:`federation.transfer.rows`: migration, report, sync) and the
generator of legacy trees.  An :class:`Entity` is one table of the schema as
the legacy files hold it: its fields in column order (key fields first), the
defaults a missing value reads as, which fields a legacy record must have, the
legacy document it lives in and where in it.  The lock of each document is
here too (its file: :mod:`federation.domain.layout`), and the domain rules both
stores enforce (a vote needs an open poll and one of its options; only the
creator closes a poll).

Adding a field to an entity: a schema migration (:mod:`federation.stores.schema`),
its :class:`Field` here, and the code that produces its value.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from typing import Any, Callable

from . import validate as _validate
from ..errors import ConflictError, NotFoundError, ValidationError

__all__ = [
    "Field", "Entity", "InvalidRecord", "MESSAGES", "CONTEXT", "EXPERTISE", "PROFILES", "POLLS", "VOTES",
    "SESSIONS", "SESSION_ROLES", "SESSION_ARTIFACTS", "SESSION_REVIEWS", "MESSAGE_HISTORY", "TABLES", "ALL",
    "BY_NAME", "ENTITY_NAMES", "keys_lock", "MESSAGE_FIELDS", "check_vote", "check_close", "history_entry", "json_type",
    "TASKS", "TASKS_LOCK", "Retention", "task_view", "check_task_holder", "task_takeable",
]

#: the fields a leased or dead message file carries beside the message's own (the layout: domain.layout)
DELIVERY_FIELDS = ("attempt", "lease_until", "dead_at")


# ---------------------------------------------------------------------------
# the lock of each legacy document (advisory file locks: layout.Tree.lock_path)

POLLS_LOCK = "polls"
#: every task document is under one lock: a claim picks among all the open tasks
TASKS_LOCK = "tasks"
#: the documents with one lock for every document of their kind
_ONE_LOCK = {"polls": POLLS_LOCK, "task": TASKS_LOCK}
#: the lock name of each other legacy document kind: a prefix, then the validated owner
_LOCK_PREFIX = {"message": "inbox", "context": "node", "expertise": "node", "profile": "node", "session": "session"}


def document_lock(document: str, owner: str = "") -> str:
    """The lock of the legacy *document* kind (see :attr:`Entity.document`) of *owner*.

    One lock per inbox (every message file in it), one per agent's node files
    (context, expertise, profile), one per session, one for ``polls.json``, one for every task.
    """
    if document in _ONE_LOCK:
        return _ONE_LOCK[document]
    owner = _validate.ident(owner, "session id") if document == "session" else _validate.agent(owner)
    return f"{_LOCK_PREFIX[document]}-{owner}"


def keys_lock(sender: str) -> str:
    """The lock of *sender*'s idempotency keys (``nodes/{sender}/sent_keys/``)."""
    return f"keys-{_validate.agent(sender)}"


inbox_lock = functools.partial(document_lock, "message")
node_lock = functools.partial(document_lock, "context")
session_lock = functools.partial(document_lock, "session")


# ---------------------------------------------------------------------------
# entity descriptions


class InvalidRecord(Exception):
    """A legacy record (or a part of one) that cannot be imported, and why."""


def json_type(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number",
            type(None): "null"}.get(type(value), type(value).__name__)


@dataclasses.dataclass(frozen=True)
class Field:
    """One column of an entity, and how a legacy record holds it.

    default:  what a missing, null or empty legacy value reads as (and what
              the stores return for a NULL column).
    required: a legacy record without it is not imported (migration, report).
    json:     ``list`` or ``dict``: a JSON value, stored as JSON text; a legacy
              list must hold strings; a legacy value of another type reads as
              the default (and the migration reports it as dropped).  ``object``:
              any JSON value (None stays None: a NULL column).
    type:     the JSON type of a plain value (``str``; ``int`` for a count).
    """

    name: str
    default: Any = None
    required: bool = False
    json: type | None = None
    type: type = str

    def encode(self, value: Any) -> Any:
        """The column value of a record's value."""
        if self.json is None:
            return value
        if self.json is object:
            return None if value is None else json.dumps(value, ensure_ascii=False, sort_keys=True)
        return json.dumps(self.json() if value is None else value, ensure_ascii=False, sort_keys=True)

    def decode(self, value: Any) -> Any:
        """The JSON value of a column value (the default for anything else)."""
        if self.json is object:
            return None if value is None else json.loads(value)
        decoded = json.loads(value) if value else None
        return decoded if isinstance(decoded, self.json) else self.json()


@dataclasses.dataclass(frozen=True)
class Entity:
    """One schema table and its legacy counterpart.

    fields:    in column order, the key fields first: the order of a row in
               every layer (file rows, database rows, inserts).
    key:       how many leading fields form the primary key.
    document:  the legacy document a record lives in: ``message``, ``context``,
               ``expertise``, ``profile``, ``polls``, ``session`` (its id is the
               first key field), or ``""`` for a table without a file side.
    parent:    for a record nested in another entity's record: that entity's
               table; ``container`` is the parent record's field holding these
               records, keyed by the key fields after the parent's (one level
               of JSON object per key field).
    db_filter: which database rows have a file counterpart.
    extra:     insert-only columns, computed from a row and all the tree's rows,
               so that a migration is deterministic (no CURRENT_TIMESTAMP defaults).
    replace_set: the rows of one owner (``expertise`` of an agent) are a set that
               a live write replaces as a whole: an owner already in the
               database keeps its set, older file content never adds to it.
    legacy_fields: the fields of the legacy record, where they are not the
               entity's (``expertise``: one file lists the domains).
    retention: which records ``federation prune`` removes, on both sides (:class:`Retention`).
    """

    table: str
    fields: tuple[Field, ...]
    key: int
    document: str = ""
    parent: str | None = None
    container: str | None = None
    db_filter: str = ""
    extra: tuple[tuple[str, Callable[[tuple, dict], Any]], ...] = ()
    replace_set: bool = False
    legacy_fields: tuple[str, ...] | None = None
    retention: "Retention | None" = None

    @property
    def name(self) -> str:
        return self.table

    @functools.cached_property
    def columns(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)

    @functools.cached_property
    def key_columns(self) -> tuple[str, ...]:
        return self.columns[: self.key]

    def index(self, column: str) -> int:
        """The position of *column* in a row."""
        return self.columns.index(column)

    def field(self, column: str) -> Field:
        return self.fields[self.index(column)]

    def default(self, column: str) -> Any:
        return self.field(column).default

    @functools.cached_property
    def own_fields(self) -> tuple[Field, ...]:
        """The fields a legacy record holds in its body (a nested record's keys are its place)."""
        if self.parent is None:
            return self.fields
        return self.fields[self.key:]

    @functools.cached_property
    def known(self) -> frozenset[str]:
        """Every field name a legacy record of this entity may carry."""
        names = self.legacy_fields or tuple(f.name for f in self.own_fields)
        return frozenset(names) | {e.container for e in ALL if e.parent == self.table}

    # -- a legacy record: the file store's view (lenient) and the transfer layer's (strict)
    def record(self, data: dict, given: dict | None = None, fallback: dict | None = None) -> dict:
        """The record of legacy dict *data*, in field order, as the legacy reader showed it.

        *given*: values fixed by the record's place (a node's agent); *fallback*:
        values for fields the body lacks (a message's id from its file name).
        Nothing is checked: a legacy reader shows what it finds.
        """
        return dict(zip(self.columns if self.parent is None else self.columns[self.key:],
                        self.read(data, given, fallback, strict=False)))

    def read(self, data: dict, given: dict | None = None, fallback: dict | None = None, *,
             strict: bool = True) -> tuple:
        """The row of legacy dict *data*: the values :meth:`record` shows, JSON encoded.

        *strict* raises :class:`InvalidRecord` naming the first field that is
        missing or of the wrong type; a JSON object field of the wrong type
        reads as its default (the caller reports it as dropped, see
        :meth:`unreadable`).  Not *strict*: the values of :meth:`record`.
        """
        row = []
        for f in self.fields if strict else self.own_fields:
            name = f.name
            if given is not None and name in given:
                row.append(given[name])
                continue
            value = data.get(name)
            if f.json is object:  # any JSON value, kept as it is
                row.append(f.encode(value) if strict else value)
                continue
            if f.json is not None:
                if not isinstance(value, f.json):
                    if strict and f.json is list and (value is not None or f.default is None):  # a default: may be absent
                        raise InvalidRecord(f"field {name!r} must be a list of strings")
                    value = f.json()
                elif strict and f.json is list and not all(isinstance(v, str) for v in value):
                    raise InvalidRecord(f"field {name!r} must be a list of strings")
                row.append(f.encode(value) if strict else f.json(value))
                continue
            if value is None or value == "":
                if fallback is not None and name in fallback:
                    value = fallback[name]
                elif f.default is not None:
                    value = f.default
                elif strict and f.required and value is None:
                    raise InvalidRecord(f"missing required field {name!r}")
            elif strict and value.__class__ is not f.type:
                raise InvalidRecord(f"field {name!r} must be a {json_type(f.type())}, found {type(value).__name__}")
            row.append(value)
        return tuple(row)

    def unreadable(self, data: dict) -> list[str]:
        """The JSON fields of *data* that :meth:`read` replaced by their default (a wrong type)."""
        return [name for name in self._object_fields
                if data.get(name) is not None and not isinstance(data[name], dict)]

    @functools.cached_property
    def _object_fields(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.own_fields if f.json is dict)

    # -- the database's view
    def row_of(self, record: dict) -> tuple:
        """The column values of *record* (a store's record dict), defaults applied, JSON encoded."""
        out = []
        for f in self.fields:
            value = record.get(f.name)
            if f.json is not None:
                out.append(f.encode(list(value) if f.json is list and value is not None else value))
            else:
                out.append(f.default if (value is None or value == "") and f.default is not None else value)
        return tuple(out)

    @property
    def from_row(self) -> Callable[[tuple], dict]:
        """``row -> record``: defaults applied, JSON decoded (compiled once: it is on every read)."""
        fn = _compiled.get(self.table)
        if fn is None:
            parts = []
            for i, f in enumerate(self.fields):
                if f.json is not None:
                    expr = f"F[{i}].decode(r[{i}])"
                elif f.default is not None:
                    expr = f"(r[{i}] or F[{i}].default)"
                else:
                    expr = f"r[{i}]"
                parts.append(f"{f.name!r}: {expr}")
            # a dict display: twice as fast as dict(zip(...)) on a 10,000-message claim
            fn = _compiled[self.table] = eval("lambda r: {" + ", ".join(parts) + "}", {"F": self.fields})
        return fn


_compiled: dict[str, Callable[[tuple], dict]] = {}


@dataclasses.dataclass(frozen=True)
class Retention:
    """The records ``federation prune`` removes: those whose fields equal *when* and whose *column* (a
    timestamp of our clock: sorts as text) is before the cutoff.  One rule, as SQL and for a legacy record."""

    column: str
    when: tuple[tuple[str, str], ...] = ()

    def sql(self) -> str:
        """The condition on a row (``?``: the cutoff); the *when* values are constants of the code, never input."""
        return " AND ".join([f"{c} = '{v}'" for c, v in self.when] + [f"{self.column} < ?"])

    def due(self, record: dict, cutoff: str) -> bool:
        stamp = record.get(self.column)
        return (isinstance(stamp, str) and stamp < cutoff
                and all(record.get(c) == v for c, v in self.when))


def _created_at_of_poll(row: tuple, rows: dict) -> Any:
    # voted_at is not in polls.json: the poll's creation time, as SqlStore.save_polls writes it
    return rows["polls"][row[:1]][POLLS.index("created_at")]


def _timestamp_of_message(row: tuple, rows: dict) -> Any:
    return row[MESSAGES.index("timestamp")]


MESSAGES = Entity(
    "messages",
    (Field("id"), Field("sender", required=True), Field("recipient"), Field("content", required=True),
     Field("message_type", default="task"), Field("reply_to"), Field("timestamp", required=True)),
    key=1, document="message", db_filter="read_at IS NULL", extra=(("created_at", _timestamp_of_message),))
CONTEXT = Entity(
    "context", (Field("agent"), Field("text", default=""), Field("last_heartbeat"), Field("updated_at")),
    key=1, document="context")
EXPERTISE = Entity(
    "expertise", (Field("agent"), Field("domain"), Field("updated_at")), key=2, document="expertise",
    replace_set=True, legacy_fields=("agent", "domains", "updated_at"))
PROFILES = Entity(
    "profiles", (Field("agent"), Field("default_role"), Field("traits", json=dict), Field("updated_at")),
    key=1, document="profile")
POLLS = Entity(
    "polls",
    (Field("id"), Field("question", required=True), Field("options", json=list), Field("status", default="open"),
     Field("creator", required=True), Field("created_at", required=True)),
    key=1, document="polls")
VOTES = Entity(
    "votes", (Field("poll_id"), Field("voter"), Field("option")), key=2, document="polls", parent="polls",
    container="votes", extra=(("voted_at", _created_at_of_poll),))
SESSIONS = Entity(
    "sessions",
    (Field("id"), Field("title", required=True), Field("description"), Field("lead", required=True),
     Field("phase", default="planning"), Field("created_at", required=True), Field("updated_at")),
    key=1, document="session")
SESSION_ROLES = Entity(
    "session_roles",
    (Field("session_id"), Field("agent"), Field("role", required=True), Field("subtask"), Field("assigned_at")),
    key=2, document="session", parent="sessions", container="roles")
SESSION_ARTIFACTS = Entity(
    "session_artifacts",
    (Field("session_id"), Field("artifact_type"), Field("path", required=True), Field("attached_at")),
    key=2, document="session", parent="sessions", container="artifacts")
SESSION_REVIEWS = Entity(
    "session_reviews",
    (Field("session_id"), Field("artifact_type"), Field("reviewer"), Field("status"), Field("comments"),
     Field("reviewed_at")),
    key=3, document="session", parent="sessions", container="reviews")
TASKS = Entity(
    "tasks",
    (Field("id"), Field("title", required=True), Field("description"), Field("creator", required=True),
     Field("assignee"), Field("depends_on", default=(), json=list), Field("status", default="open"), Field("claimed_by"),
     Field("lease_until"), Field("attempt", default=0, type=int), Field("result", json=object),
     Field("payload", json=object), Field("created_at", required=True), Field("updated_at")),
    key=1, document="task", retention=Retention("updated_at", (("status", "done"),)))
MESSAGE_HISTORY = Entity(
    "message_history",
    (Field("direction"), Field("sender"), Field("recipient"), Field("content"), Field("message_type"),
     Field("timestamp"), Field("message_id")),
    key=0)

#: The tables with a file side, parents before children: the order rows are
#: inserted in (and deleted in reverse).
TABLES: tuple[Entity, ...] = (POLLS, VOTES, SESSIONS, SESSION_ROLES, SESSION_ARTIFACTS, SESSION_REVIEWS, CONTEXT,
                              EXPERTISE, PROFILES, MESSAGES, TASKS)
#: Every table of the federation's state.
ALL: tuple[Entity, ...] = TABLES + (MESSAGE_HISTORY,)
BY_NAME = {e.table: e for e in ALL}
#: the names an entity is known by outside (``sync --only``): each table, and each legacy document kind
ENTITY_NAMES = tuple(sorted({e.table for e in TABLES} | {e.document for e in TABLES}))

#: The fields of a message dict (and of a legacy message file), in order.
MESSAGE_FIELDS = MESSAGES.columns


# ---------------------------------------------------------------------------
# domain rules both stores enforce


def check_vote(poll: dict | None, poll_id: str, option: str) -> None:
    """A vote needs an existing, open poll and one of its options."""
    if poll is None:
        raise NotFoundError(f"poll {poll_id} does not exist")
    if (poll.get("status") or POLLS.default("status")) != "open":
        raise ConflictError(f"poll {poll_id} is closed")
    if option not in (poll.get("options") or []):
        raise ValidationError(f"{option!r} is not an option of poll {poll_id}: choose one of {poll.get('options')}")


def message_mismatch(data: dict, stem: str, agent: str) -> str | None:
    """Why a legacy message body disagrees with where its file was found, or None.

    The file's name is the message's id and its inbox the recipient: a body
    that says otherwise makes the file invalid, never a path or an address
    (CONTRACT "Untrusted files").
    """
    if not _validate.is_ident(stem):
        return f"the file name {stem!r} is not a valid message id"
    body_id, recipient = data.get("id"), data.get("recipient")
    if body_id not in (None, "", stem):
        return f"its body says id {str(body_id)!r:.200} but the file is named {stem!r}.json (the file name is the id)"
    if recipient not in (None, "", agent):
        return f"its body says recipient {str(recipient)!r:.200} but it is in {agent!r}'s inbox"
    return None


def vote_problem(options: Any, option: Any) -> str | None:
    """Why a stored vote does not count (not a string, or not an option of its poll), or None."""
    if not isinstance(option, str):
        return f"a vote must be a string, found {json_type(option)}"
    if not isinstance(options, list) or option not in options:
        return f"{option[:200]!r} is not an option of the poll"
    return None


def split_votes(options: Any, votes: dict) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """The votes of a stored poll that count, and ``(voter, why)`` for each that does not (:func:`vote_problem`)."""
    kept: dict[str, str] = {}
    refused: list[tuple[str, str]] = []
    for voter, option in votes.items():
        problem = vote_problem(options, option)
        if problem is None:
            kept[voter] = option
        else:
            refused.append((voter, problem))
    return kept, refused


def check_close(poll: dict | None, poll_id: str, agent: str) -> bool:
    """Only the creator closes a poll: True when it must be closed now, False when it already is."""
    if poll is None:
        raise NotFoundError(f"poll {poll_id} does not exist")
    if poll.get("creator") != agent:
        raise ConflictError(f"only the creator ({poll.get('creator')}) may close poll {poll_id}")
    return (poll.get("status") or POLLS.default("status")) == "open"


def history_entry(direction: str, m: dict) -> dict:
    """The message-history record of message *m* sent or received."""
    return {"direction": direction, "sender": m["sender"], "recipient": m["recipient"], "content": m["content"],
            "message_type": m.get("message_type"), "timestamp": m["timestamp"], "message_id": m["id"]}


# -- tasks (CONTRACT "The task registry"): a stored record keeps the last claim; these say what it means now


def task_view(task: dict, now: str) -> dict:
    """*task* as callers see it at *now*: a claim whose lease ended is open again (no claimer, no lease)."""
    if task.get("status") == "claimed" and (task.get("lease_until") or "") < now:
        return {**task, "status": "open", "claimed_by": None, "lease_until": None}
    return task


def task_takeable(task: dict, now: str) -> bool:
    """Whether *task* may be claimed at *now* as far as it alone says (its dependencies aside)."""
    return task_view(task, now).get("status") == "open"


def check_task_holder(task: dict | None, task_id: str, agent: str, now: str) -> None:
    """Only the claimer completes or releases a task, while its lease holds."""
    if task is None:
        raise NotFoundError(f"task {task_id} does not exist")
    status, holder = task.get("status"), task.get("claimed_by")
    if status == "done":
        raise ConflictError(f"task {task_id} is done already")
    if status != "claimed" or holder != agent:
        raise ConflictError(f"task {task_id} is not claimed by {agent!r}"
                            + (f" (claimed by {holder!r})" if status == "claimed" and holder else ""))
    if (task.get("lease_until") or "") < now:
        raise ConflictError(f"the lease of {agent!r} on task {task_id} ended at {task.get('lease_until')}: "
                            "claim it again")
