"""The legacy file tree and the database as the same ten tables of rows.

One table of entity descriptions (:data:`TABLES`) drives the migration, the
consistency report and ``sync``: :func:`read_tree` turns every legacy file
into rows of the schema's tables (reporting each malformed file by path and
reason, and each field the schema has no place for), :func:`read_db` reads
the same rows from the database.  A row is a tuple in ``Table.columns``
order, keyed by the tuple of its primary-key columns.

Only unread messages have a file counterpart, so the database side of
``messages`` is its unread rows; ``message_history`` has no file side.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Callable, Iterator

from . import _validate
from ._files import Tree, parse_json_bytes
from .core import MESSAGE_FIELDS
from .errors import ValidationError

__all__ = ["Table", "TABLES", "BY_NAME", "TreeRows", "read_tree", "read_db", "key_text", "legacy_files"]


@dataclasses.dataclass(frozen=True)
class Table:
    """One schema table as the legacy files hold it.

    columns:   compared and imported, in this order; the key columns first.
    key:       how many leading columns form the primary key.
    document:  the legacy document a row lives in: ``message``, ``context``,
               ``expertise``, ``profile``, ``polls`` or ``session``; its id is
               the row's first key column.
    db_filter: which database rows have a file counterpart.
    extra:     insert-only columns, computed from a row and all the tree's rows,
               so that a migration is deterministic (no CURRENT_TIMESTAMP defaults).
    replace_set: the rows of one owner (``expertise`` of an agent) are a set that
               a live write replaces as a whole: an owner already in the
               database keeps its set, older file content never adds to it.
    """

    name: str
    columns: tuple[str, ...]
    key: int
    document: str
    db_filter: str = ""
    extra: tuple[tuple[str, Callable[[tuple, dict], Any]], ...] = ()
    replace_set: bool = False

    @property
    def key_columns(self) -> tuple[str, ...]:
        return self.columns[: self.key]


_MSG_COLUMNS = ("id", "recipient", "sender", "content", "message_type", "reply_to", "timestamp")

#: Parents before children: the order rows are inserted in (and deleted in reverse).
TABLES: tuple[Table, ...] = (
    Table("polls", ("id", "question", "options", "status", "creator", "created_at"), 1, "polls"),
    # voted_at is not in polls.json: the poll's creation time, as SqlStore.save_polls writes it
    Table("votes", ("poll_id", "voter", "option"), 2, "polls",
          extra=(("voted_at", lambda r, rows: rows["polls"][r[:1]][5]),)),
    Table("sessions", ("id", "title", "description", "lead", "phase", "created_at", "updated_at"), 1, "session"),
    Table("session_roles", ("session_id", "agent", "role", "subtask", "assigned_at"), 2, "session"),
    Table("session_artifacts", ("session_id", "artifact_type", "path", "attached_at"), 2, "session"),
    Table("session_reviews", ("session_id", "artifact_type", "reviewer", "status", "comments", "reviewed_at"), 3,
          "session"),
    Table("context", ("agent", "text", "last_heartbeat", "updated_at"), 1, "context"),
    Table("expertise", ("agent", "domain", "updated_at"), 2, "expertise", replace_set=True),
    Table("profiles", ("agent", "default_role", "traits", "updated_at"), 1, "profile"),
    Table("messages", _MSG_COLUMNS, 1, "message", db_filter="read_at IS NULL",
          extra=(("created_at", lambda r, rows: r[6]),)),
)
BY_NAME = {t.name: t for t in TABLES}
assert set(_MSG_COLUMNS) == set(MESSAGE_FIELDS)


def key_text(key: tuple) -> str:
    """A row key as one string for people and JSON: ``poll-id/voter``."""
    return "/".join(str(k) for k in key)


# ---------------------------------------------------------------------------
# reading the legacy tree


class _Invalid(Exception):
    """A document (or a part of one) that cannot be imported, and why."""


@dataclasses.dataclass
class TreeRows:
    """Every row the legacy tree holds, plus what could not be read."""

    rows: dict[str, dict[tuple, tuple]] = dataclasses.field(default_factory=lambda: {t.name: {} for t in TABLES})
    #: where each row came from (the file to rewrite or delete on ``sync --to files``)
    sources: dict[str, dict[tuple, str]] = dataclasses.field(default_factory=lambda: {t.name: {} for t in TABLES})
    invalid: list[dict[str, str]] = dataclasses.field(default_factory=list)
    dropped_fields: list[dict[str, str]] = dataclasses.field(default_factory=list)
    files: int = 0

    def add(self, table: str, row: tuple, path: str) -> bool:
        """Keep *row*; False (and the file reported) when another file already gave its key."""
        key = row[: BY_NAME[table].key]
        seen = self.sources[table].get(key)
        if seen is not None and seen != path:
            self.invalid.append({"path": path, "reason": f"duplicate {table} key {key_text(key)!r} (also in {seen})"})
            return False
        self.rows[table][key] = row
        self.sources[table][key] = path
        return True

    def counts(self) -> dict[str, int]:
        return {name: len(rows) for name, rows in self.rows.items()}


def _str(data: dict, field: str, *, required: bool = False, default: Any = None) -> Any:
    value = data.get(field)
    if value is None:
        if required:
            raise _Invalid(f"missing required field {field!r}")
        return default
    if not isinstance(value, str):
        raise _Invalid(f"field {field!r} must be a string, found {type(value).__name__}")
    return value


def _object(value: Any, what: str) -> dict:
    if not isinstance(value, dict):
        raise _Invalid(f"{what} must be a JSON object, found {_json_type(value)}")
    return value


def _json_type(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number",
            type(None): "null"}.get(type(value), type(value).__name__)


def _dropped(out: TreeRows, path: str, data: dict, known: frozenset, prefix: str = "") -> None:
    for field in data:
        if field not in known:
            out.dropped_fields.append({"path": path, "field": f"{prefix}{field}"})


_MESSAGE_KNOWN = frozenset(MESSAGE_FIELDS)
_CONTEXT_KNOWN = frozenset(("agent", "text", "last_heartbeat", "updated_at"))
_EXPERTISE_KNOWN = frozenset(("agent", "domains", "updated_at"))
_PROFILE_KNOWN = frozenset(("agent", "default_role", "traits", "updated_at"))
_POLL_KNOWN = frozenset(("id", "question", "options", "status", "creator", "created_at", "votes"))
_SESSION_KNOWN = frozenset(("id", "title", "description", "lead", "phase", "created_at", "updated_at", "roles",
                            "artifacts", "reviews"))
_ROLE_KNOWN = frozenset(("role", "subtask", "assigned_at"))
_ARTIFACT_KNOWN = frozenset(("path", "attached_at"))
_REVIEW_KNOWN = frozenset(("status", "comments", "reviewed_at"))


@contextlib.contextmanager
def _part(where: str) -> Iterator[None]:
    """Name the part of a document an error is about."""
    try:
        yield
    except _Invalid as exc:
        raise _Invalid(f"{where}: {exc}") from None


def _message(out: TreeRows, path: str, data: Any, agent: str, stem: str) -> tuple | None:
    data = _object(data, "a message file")
    # the defaults of the legacy reader (core._message_from_file), exactly
    row = (
        _str(data, "id") or stem,
        _str(data, "recipient", default=agent),
        _str(data, "sender", required=True),
        _str(data, "content", required=True),
        _str(data, "message_type", default="task"),
        _str(data, "reply_to"),
        _str(data, "timestamp", required=True),
    )
    _dropped(out, path, data, _MESSAGE_KNOWN)
    return row if out.add("messages", row, path) else None


def _context(out: TreeRows, path: str, data: Any, agent: str) -> None:
    data = _object(data, "a context file")
    row = (agent, _str(data, "text") or "", _str(data, "last_heartbeat"), _str(data, "updated_at"))
    _dropped(out, path, data, _CONTEXT_KNOWN)
    out.add("context", row, path)


def _expertise(out: TreeRows, path: str, data: Any, agent: str) -> None:
    data = _object(data, "an expertise file")
    domains = data.get("domains") or []
    if not isinstance(domains, list) or not all(isinstance(d, str) for d in domains):
        raise _Invalid("field 'domains' must be a list of strings")
    updated_at = _str(data, "updated_at")
    _dropped(out, path, data, _EXPERTISE_KNOWN)
    if len(set(domains)) != len(domains):  # the table holds each (agent, domain) once
        out.dropped_fields.append({"path": path, "field": "domains (duplicate entries)"})
    for domain in sorted(set(domains)):  # an empty list means no expertise: no rows
        out.add("expertise", (agent, domain, updated_at), path)


def _profile(out: TreeRows, path: str, data: Any, agent: str) -> None:
    data = _object(data, "a profile file")
    traits = data.get("traits")
    if traits is not None and not isinstance(traits, dict):
        # the legacy reader shows such a profile with no traits: import it so, and say so
        out.dropped_fields.append({"path": path, "field": "traits"})
        traits = None
    row = (agent, _str(data, "default_role"), json.dumps(traits or {}, ensure_ascii=False, sort_keys=True),
           _str(data, "updated_at"))
    _dropped(out, path, data, _PROFILE_KNOWN)
    out.add("profiles", row, path)


def _polls(out: TreeRows, path: str, data: Any) -> None:
    data = _object(data, "polls.json")
    for poll_id, poll in data.items():
        try:
            poll = _object(poll, f"poll {poll_id!r}")
            pid = _str(poll, "id") or poll_id
            _validate.ident(pid, "poll id")
            options = poll.get("options")
            if not isinstance(options, list) or not all(isinstance(o, str) for o in options):
                raise _Invalid("field 'options' must be a list of strings")
            votes = poll.get("votes") or {}
            _object(votes, "field 'votes'")
            bad = [v for v, o in votes.items() if not isinstance(o, str)]
            if bad:
                raise _Invalid(f"the vote of {bad[0]!r} must be a string")
            created_at = _str(poll, "created_at", required=True)
            row = (pid, _str(poll, "question", required=True), json.dumps(options, ensure_ascii=False),
                   _str(poll, "status") or "open", _str(poll, "creator", required=True), created_at)
        except (_Invalid, ValidationError) as exc:
            out.invalid.append({"path": path, "reason": f"poll {poll_id!r}: {exc}"})
            continue
        _dropped(out, path, poll, _POLL_KNOWN, prefix=f"{poll_id}.")
        out.add("polls", row, path)
        for voter, option in votes.items():
            out.add("votes", (pid, voter, option), path)


def _session(out: TreeRows, path: str, data: Any, stem: str) -> None:
    data = _object(data, "a session file")
    sid = _str(data, "id") or stem
    _validate.ident(sid, "session id")
    row = (sid, _str(data, "title", required=True), _str(data, "description"), _str(data, "lead", required=True),
           _str(data, "phase") or "planning", _str(data, "created_at", required=True), _str(data, "updated_at"))
    children: list[tuple[str, tuple]] = []
    for agent, role in _object(data.get("roles") or {}, "field 'roles'").items():
        with _part(f"roles.{agent}"):
            role = _object(role, "a role")
            children.append(("session_roles", (sid, agent, _str(role, "role", required=True),
                                               _str(role, "subtask"), _str(role, "assigned_at"))))
        _dropped(out, path, role, _ROLE_KNOWN, prefix=f"roles.{agent}.")
    for atype, art in _object(data.get("artifacts") or {}, "field 'artifacts'").items():
        with _part(f"artifacts.{atype}"):
            art = _object(art, "an artifact")
            children.append(("session_artifacts", (sid, atype, _str(art, "path", required=True),
                                                   _str(art, "attached_at"))))
        _dropped(out, path, art, _ARTIFACT_KNOWN, prefix=f"artifacts.{atype}.")
    for atype, by_reviewer in _object(data.get("reviews") or {}, "field 'reviews'").items():
        with _part(f"reviews.{atype}"):
            by_reviewer = _object(by_reviewer, "the reviews of an artifact")
        if not by_reviewer:  # no row can say "no reviews yet" for a type: say it is not kept
            out.dropped_fields.append({"path": path, "field": f"reviews.{atype} (empty)"})
        for reviewer, rev in by_reviewer.items():
            with _part(f"reviews.{atype}.{reviewer}"):
                rev = _object(rev, "a review")
                children.append(("session_reviews", (sid, atype, reviewer, _str(rev, "status"),
                                                     _str(rev, "comments"), _str(rev, "reviewed_at"))))
            _dropped(out, path, rev, _REVIEW_KNOWN, prefix=f"reviews.{atype}.{reviewer}.")
    _dropped(out, path, data, _SESSION_KNOWN)
    out.add("sessions", row, path)
    for table, child in children:
        out.add(table, child, path)


_NODE_FILES = {"context_window.json": "context", "expertise.json": "expertise", "profile.json": "profile"}


def legacy_files(tree: Tree) -> Iterator[tuple[str, str, str, str]]:
    """``(kind, path, owner, stem)`` for every file of the legacy tree, cheaply (no reads).

    kind is the document kind, or ``"unknown"`` for a file the legacy format
    does not define (reported, never read); owner is the agent (node files)
    or the file stem (sessions).  Dotfiles (temp files of atomic writes) are
    skipped.
    """
    try:
        nodes = sorted(os.scandir(tree.nodes), key=lambda e: e.name)
    except FileNotFoundError:
        nodes = []
    for node in nodes:
        if node.name.startswith("."):
            continue
        if not node.is_dir():
            yield "unknown", node.path, "", ""
            continue
        inbox = None
        for entry in sorted(os.scandir(node.path), key=lambda e: e.name):
            name = entry.name
            if name.startswith("."):
                continue
            if name == "inbox" and entry.is_dir():
                inbox = entry.path
            elif name in _NODE_FILES and entry.is_file():
                yield _NODE_FILES[name], entry.path, node.name, name[:-5]
            else:
                yield "unknown", entry.path, node.name, ""
        if inbox is None:
            continue
        with os.scandir(inbox) as entries:
            for entry in entries:
                name = entry.name
                if name[0] == ".":
                    continue
                if name.endswith(".json") and entry.is_file():
                    yield "message", entry.path, node.name, name[:-5]
                else:
                    yield "unknown", entry.path, node.name, ""
    try:
        shared = sorted(os.scandir(tree.shared), key=lambda e: e.name)
    except FileNotFoundError:
        shared = []
    for entry in shared:
        if entry.name.startswith("."):
            continue
        if entry.name == "polls.json" and entry.is_file():
            yield "polls", entry.path, "", "polls"
        elif entry.name == "sessions" and entry.is_dir():
            for sub in sorted(os.scandir(entry.path), key=lambda e: e.name):
                name = sub.name
                if name.startswith("."):
                    continue
                if name.endswith(".json") and sub.is_file():
                    yield "session", sub.path, name[:-5], name[:-5]
                else:
                    yield "unknown", sub.path, "", ""
        else:
            yield "unknown", entry.path, "", ""


#: the ``field`` of a ``dropped_fields`` entry for a whole file the legacy format does not define
UNKNOWN_FILE = "(whole file: not part of the legacy format)"

_scan = json.JSONDecoder().scan_once  # the C scanner, without decode()'s whitespace regexes


def _read_bytes(path: str) -> bytes:
    # os.read on a raw descriptor: a third of the cost of open() + a buffered reader
    fd = os.open(path, os.O_RDONLY)
    try:
        data = os.read(fd, 65536)
        if len(data) < 65536:
            return data
        parts = [data]
        while True:
            more = os.read(fd, 1 << 20)
            if not more:
                return b"".join(parts)
            parts.append(more)
    finally:
        os.close(fd)


def _parse(raw: bytes) -> Any:
    try:
        text = raw.decode("utf-8")
        value, end = _scan(text, 0)
        if end == len(text) or text[end:].isspace():
            return value
    except (ValueError, StopIteration):  # UnicodeDecodeError is a ValueError
        pass
    return parse_json_bytes(raw)  # leading space or an error: parse again, carefully, for the reason


def _message_fast(data: Any, agent: str, stem: str) -> tuple | None:
    """The row of a well-formed message file with no unknown field; None sends it the careful way."""
    if type(data) is not dict or len(data) > 7 or not _MESSAGE_KNOWN.issuperset(data):
        return None
    get = data.get
    sender, content, stamp = get("sender"), get("content"), get("timestamp")
    mid, recipient, mtype, reply_to = get("id"), get("recipient"), get("message_type"), get("reply_to")
    if not (type(sender) is str and type(content) is str and type(stamp) is str
            and (mid is None or type(mid) is str) and (recipient is None or type(recipient) is str)
            and (mtype is None or type(mtype) is str) and (reply_to is None or type(reply_to) is str)):
        return None
    return (mid or stem, agent if recipient is None else recipient, sender, content,
            "task" if mtype is None else mtype, reply_to, stamp)


def read_tree(root: Path, progress: bool = False) -> TreeRows:
    """Read every legacy file under *root* into rows; never modifies a file."""
    tree = Tree(root)
    out = TreeRows()
    files = list(legacy_files(tree))
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(files), unit="file", desc="reading", leave=False, mininterval=0.25)
    valid_agents: dict[str, bool] = {}
    msg_rows, msg_sources = out.rows["messages"], out.sources["messages"]
    for n, (kind, path, owner, stem) in enumerate(files):
        if bar is not None and n % 512 == 0:
            bar.n = n
            bar.refresh()
        if kind == "unknown":  # not the legacy format's: nothing is imported from it, and it is said
            out.dropped_fields.append({"path": path, "field": UNKNOWN_FILE})
            continue
        try:
            if kind != "polls" and kind != "session":
                ok = valid_agents.get(owner)
                if ok is None:
                    ok = valid_agents[owner] = _agent_ok(owner)
                if not ok:
                    raise _Invalid(f"{owner!r} is not a valid agent name")
            data = _parse(_read_bytes(path))
            if kind == "message":
                row = _message_fast(data, owner, stem)
                if row is not None and (row[0],) not in msg_sources:
                    msg_rows[(row[0],)] = row
                    msg_sources[(row[0],)] = path
                else:  # unknown fields, bad types, duplicates: reported on the careful path
                    _message(out, path, data, owner, stem)
            elif kind == "context":
                _context(out, path, data, owner)
            elif kind == "expertise":
                _expertise(out, path, data, owner)
            elif kind == "profile":
                _profile(out, path, data, owner)
            elif kind == "polls":
                _polls(out, path, data)
            else:
                _session(out, path, data, owner)
        except (_Invalid, ValueError, ValidationError, OSError) as exc:
            out.invalid.append({"path": path, "reason": str(exc) or type(exc).__name__})
    out.files = len(files) - sum(1 for f in files if f[0] == "unknown")
    if bar is not None:
        bar.n = len(files)
        bar.close()
    return out


def _agent_ok(name: str) -> bool:
    try:
        _validate.agent(name)
        return True
    except ValidationError:
        return False


# ---------------------------------------------------------------------------
# reading the database


def select_sql(table: Table, what: str | None = None) -> str:
    """SELECT *what* (default: the table's columns) from the rows that have a file counterpart."""
    what = what or ", ".join(table.columns)
    return f"SELECT {what} FROM {table.name}" + (f" WHERE {table.db_filter}" if table.db_filter else "")


def read_db(store: Any) -> dict[str, dict[tuple, tuple]]:
    """The database rows that have a file counterpart, per table, keyed like :func:`read_tree`."""

    def fn(tx) -> dict[str, dict[tuple, tuple]]:
        out = {}
        for table in TABLES:
            k = table.key
            out[table.name] = {r[:k]: r for r in map(tuple, tx.fetchall(select_sql(table)))}
        return out

    return store.db.read(fn)
