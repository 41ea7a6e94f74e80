"""A legacy document's rows, entity by entity: a message (one file, or one of a list-file inbox), a node
document (context, profile, expertise), the polls document (votes nested), a folder's document (a session
with its roles, artifacts and reviews; a task).

The entity descriptions (:mod:`federation.domain.entities`) drive it: each record becomes a row of its
table (a tuple in ``Entity.columns`` order, keyed by its primary-key columns); a field the schema has no
place for is reported as dropped, a record that cannot be read as invalid (:class:`TreeRows`).
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Iterator

from ..domain import layout
from ..domain import validate as _validate
from ..domain.delivery import delivery_problem
from ..domain.entities import (BY_NAME, DELIVERY_FIELDS, MESSAGES, POLLS, TABLES, Entity, InvalidRecord,
                               json_type as _json_type, message_mismatch, split_votes)
from ..domain.layout import FOLDER_OF, MESSAGE_LIST, NODE_FILES, POLLS_FILE
from ..errors import ValidationError
from ..stores.files import Tree
from .unknown import Unknown

__all__ = ["TreeRows", "key_text", "read_document", "document_rows"]


def key_text(key: tuple) -> str:
    """A row key as one string for people and JSON: ``poll-id/voter``."""
    return "/".join(str(k) for k in key)


# ---------------------------------------------------------------------------
_Invalid = InvalidRecord


@dataclasses.dataclass
class TreeRows:
    """Every row the legacy tree holds, plus what could not be read."""

    rows: dict[str, dict[tuple, tuple]] = dataclasses.field(default_factory=lambda: {t.name: {} for t in TABLES})
    #: where each row came from (the file to rewrite or delete on ``sync --to files``)
    sources: dict[str, dict[tuple, str]] = dataclasses.field(default_factory=lambda: {t.name: {} for t in TABLES})
    invalid: list[dict[str, str]] = dataclasses.field(default_factory=list)
    dropped_fields: list[dict[str, str]] = dataclasses.field(default_factory=list)
    files: int = 0
    #: the documents that could not be read (torn, invalid, a link or FIFO where one should be): never empty
    unknown: "Unknown" = dataclasses.field(default_factory=lambda: Unknown())
    #: the root the paths are under (what :func:`unknown_scope` maps a path to its documents against)
    root: str = ""

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


def _object(value: Any, what: str) -> dict:
    if not isinstance(value, dict):
        raise _Invalid(f"{what} must be a JSON object, found {_json_type(value)}")
    return value


def _dropped(out: TreeRows, path: str, data: dict, entity: Entity, prefix: str = "") -> None:
    known = entity.known
    if len(data) <= len(known) and known.issuperset(data):  # the common case, in one set operation
        return
    for field in data:
        if field not in known:
            out.dropped_fields.append({"path": path, "field": f"{prefix}{field}"})


@contextlib.contextmanager
def _part(where: str) -> Iterator[None]:
    """Name the part of a document an error is about."""
    try:
        yield
    except _Invalid as exc:
        raise _Invalid(f"{where}: {exc}") from None


def _record(out: TreeRows, path: str, entity: Entity, data: dict, given: dict | None = None,
            fallback: dict | None = None, prefix: str = "") -> tuple:
    """The row of one legacy record, its unknown and unreadable fields reported as dropped."""
    row = entity.read(data, given, fallback)
    _dropped(out, path, data, entity, prefix)
    for name in entity.unreadable(data) if entity._object_fields else ():  # the legacy reader shows it as the default: import it so, and say so
        out.dropped_fields.append({"path": path, "field": f"{prefix}{name}"})
    return row


def _children(out: TreeRows, path: str, entity: Entity, parent_key: tuple, data: dict,
              prefix: str = "") -> list[tuple[str, tuple]]:
    """The rows of *entity* nested in its parent's record *data*: one JSON object level per key field
    after the parent's, then the record (or, for an entity of one own field such as a vote, its value)."""
    found: list[tuple[str, tuple]] = []
    singular = entity.container.rstrip("s")
    value_leaf = len(entity.own_fields) == 1

    def walk(value: Any, keys: tuple, where: str) -> None:
        if len(keys) == entity.key:  # one record
            if value_leaf:
                if not isinstance(value, str):
                    raise _Invalid(f"the {singular} of {keys[-1]!r} must be a string")
                found.append((entity.table, keys + (value,)))
                return
            with _part(where):
                value = _object(value, f"a {singular}")
                row = _record(out, path, entity, value, dict(zip(entity.key_columns, keys)), prefix=f"{prefix}{where}.")
            found.append((entity.table, row))
            return
        if len(keys) > len(parent_key):
            with _part(where):
                value = _object(value, f"the {entity.container} of one {entity.key_columns[len(keys) - 1]}")
            if not value:  # no row can say "none yet" for this key: say it is not kept
                out.dropped_fields.append({"path": path, "field": f"{prefix}{where} (empty)"})
        for k, v in value.items():
            walk(v, keys + (k,), f"{where}.{k}")

    top = _object(data.get(entity.container) or {}, f"field {entity.container!r}")
    for k, v in top.items():
        walk(v, parent_key + (k,), f"{entity.container}.{k}")
    return found


_NODE_ENTITY = {e.document: e for e in TABLES if e.document in NODE_FILES.values()}
_NESTED = {parent: tuple(e for e in TABLES if e.parent == parent) for parent in BY_NAME}


def _message(out: TreeRows, path: str, data: Any, agent: str, stem: str) -> None:
    if type(data) is not dict:
        raise _Invalid(f"a message file must be a JSON object, found {_json_type(data)}")
    mismatch = message_mismatch(data, stem, agent)
    if mismatch:  # the file's place names the message; a body that disagrees is never used for a path
        raise _Invalid(mismatch)
    if "attempt" in data or "lease_until" in data or "dead_at" in data:  # a leased or dead message's own fields
        problem = delivery_problem(data)  # bounded before use (migrate carries them into the database)
        if problem:
            raise _Invalid(problem)
        data = {k: v for k, v in data.items() if k not in DELIVERY_FIELDS}
    row = _record(out, path, MESSAGES, data, fallback={"id": stem, "recipient": agent})
    sources = out.sources["messages"]
    if row[:1] not in sources:  # the common case, without TreeRows.add's bookkeeping (100,000 files)
        out.rows["messages"][row[:1]] = row
        sources[row[:1]] = path
    else:
        out.add("messages", row, path)


def _node_document(out: TreeRows, path: str, data: Any, entity: Entity, agent: str) -> None:
    data = _object(data, f"a{'n' if entity.document[0] in 'aeiou' else ''} {entity.document} file")
    out.add(entity.table, _record(out, path, entity, data, given={"agent": agent}), path)


def _expertise(out: TreeRows, path: str, data: Any, agent: str) -> None:
    entity = BY_NAME["expertise"]
    data = _object(data, "an expertise file")
    domains = data.get("domains") or []
    if not isinstance(domains, list) or not all(isinstance(d, str) for d in domains):
        raise _Invalid("field 'domains' must be a list of strings")
    _dropped(out, path, data, entity)
    if len(set(domains)) != len(domains):  # the table holds each (agent, domain) once
        out.dropped_fields.append({"path": path, "field": "domains (duplicate entries)"})
    for domain in sorted(set(domains)):  # an empty list means no expertise: no rows
        out.add("expertise", entity.read({**data, "domain": domain}, given={"agent": agent}), path)


def _polls(out: TreeRows, path: str, data: Any) -> None:
    data = _object(data, POLLS_FILE)
    for poll_id, poll in data.items():
        try:
            poll = _object(poll, f"poll {poll_id!r}")
            row = POLLS.read(poll, fallback={"id": poll_id})
            _validate.ident(row[0], "poll id")
            poll = _counted_votes(out, path, poll_id, poll)
            children = [c for child in _NESTED["polls"] for c in _children(out, path, child, row[:1], poll)]
        except (_Invalid, ValidationError) as exc:
            out.invalid.append({"path": path, "reason": f"poll {poll_id!r}: {exc}"})
            out.unknown.add(path, f"poll {poll_id!r}: {exc}", "polls", doc_id=str(poll_id))
            continue
        _dropped(out, path, poll, POLLS, prefix=f"{poll_id}.")
        out.add("polls", row, path)
        for table, child in children:
            out.add(table, child, path)


def _counted_votes(out: TreeRows, path: str, poll_id: str, poll: dict) -> dict:
    """*poll* without the votes that do not name one of its options (each reported as invalid, not imported)."""
    votes = poll.get("votes")
    if not isinstance(votes, dict) or not votes:
        return poll
    kept, refused = split_votes(poll.get("options"), votes)
    for voter, problem in refused:
        out.invalid.append({"path": path, "reason": f"poll {poll_id!r}: the vote of {voter!r} is not imported: {problem}"})
    return poll if len(kept) == len(votes) else {**poll, "votes": kept}


def _folder_document(out: TreeRows, path: str, data: Any, kind: str, stem: str) -> None:
    """A document of a folder of shared/ (a session, a task): one record of its kind's top entity, with the
    records nested in it (a session's roles, artifacts, reviews)."""
    entity = _TOP_OF[kind]
    data = _object(data, f"a {kind} file")
    row = entity.read(data, fallback={"id": stem})
    _validate.ident(row[0], f"{kind} id")
    children = [c for child in _NESTED[entity.table] for c in _children(out, path, child, row[:1], data)]
    _dropped(out, path, data, entity)
    out.add(entity.table, row, path)
    for table, child in children:
        out.add(table, child, path)


#: the top entity of each document kind (the one whose records are the documents)
_TOP_OF = {e.document: e for e in TABLES if e.parent is None}


def _message_list(out: TreeRows, path: str, data: Any, agent: str) -> None:
    """The unread messages of a list-file inbox (a read one, marked ``read`` or with a ``read_at``, is
    history: no row); a message that cannot be read is listed in ``invalid``, the others are kept."""
    if not isinstance(data, list):
        raise _Invalid(f"a list-file inbox must be a JSON list, found {_json_type(data)}")
    for i, message in enumerate(data):
        if isinstance(message, dict) and (message.get("read") or message.get("read_at")):
            continue
        mid = message.get("id") if isinstance(message, dict) else None
        try:
            if not isinstance(mid, str):
                raise _Invalid("no text id")
            _validate.ident(mid, "message id")
            _message(out, path, {k: v for k, v in message.items() if k != "read"}, agent, mid)
        except (_Invalid, ValidationError, ValueError) as exc:
            out.invalid.append({"path": path, "reason": f"message {i}: {exc}"})



def read_document(out: TreeRows, kind: str, path: str, data: Any, owner: str, stem: str) -> None:
    """The rows of the legacy document *data* of *kind* read from *path* (*owner*: the agent of a node file
    or a message, the id of a folder's document), into *out*; InvalidRecord, ValidationError or ValueError
    when it cannot be read (the caller reports it)."""
    if kind == "message":
        _message(out, path, data, owner, stem)
    elif kind == MESSAGE_LIST:
        _message_list(out, path, data, owner)
    elif kind == "expertise":
        _expertise(out, path, data, owner)
    elif kind == "polls":
        _polls(out, path, data)
    elif kind in FOLDER_OF:
        _folder_document(out, path, data, kind, owner)
    else:
        _node_document(out, path, data, _NODE_ENTITY[kind], owner)


def document_rows(tree: Tree, kind: str, owner: str, data: Any) -> TreeRows:
    """The rows of one legacy document *data* of *kind* (a node file, or a session: *owner* is the agent or
    session id), read as if from its file: what :mod:`federation.adopt` writes to the database after merging
    a save into the database's record.  What cannot be read is in ``invalid``."""
    out = TreeRows(root=str(tree.root))
    path = str(layout.document_file(tree, kind, owner, owner))
    try:
        read_document(out, kind, path, data, owner, owner)
    except (_Invalid, ValueError, ValidationError) as exc:
        out.invalid.append({"path": path, "reason": str(exc) or type(exc).__name__})
    return out


