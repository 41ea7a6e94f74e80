"""The row/transfer layer: the legacy file tree and the database as the same tables of rows.

The entity descriptions (:mod:`federation.domain.entities`) drive the migration, the
consistency report and ``sync``: :func:`read_tree` turns every legacy file
into rows of the schema's tables (reporting each malformed file by path and
reason, and each field the schema has no place for), :func:`read_db` reads
the same rows from the database.  A row is a tuple in ``Entity.columns``
order, keyed by the tuple of its primary-key columns.

Only unread messages have a file counterpart, so the database side of
``messages`` is its unread rows; ``message_history`` has no file side.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import json
import os
import stat as _stat
import time
from pathlib import Path
from typing import Any, Iterable, Iterator

from ..stores import sqltext as _sql
from ..domain import validate as _validate
from ..stores import files as _files
from ..stores.files import MAX_FILE_BYTES, Tree, check_depth, parse_json_bytes
from ..errors import CorruptFileError
from ..domain.entities import (BY_NAME, DELIVERY_FIELDS, MESSAGES, POLLS, TABLES, Entity, InvalidRecord,
                               json_type as _json_type, document_lock, message_mismatch, split_votes)
from ..domain import layout
from ..domain.delivery import delivery_problem
from ..domain.layout import (FOLDER_DOCUMENTS, FOLDER_OF, LIST_INBOX, MESSAGE_DIRS, MESSAGE_LIST, NODE_FILES,
                             POLLS_FILE, SENT_KEYS_DIR, document_file)
from ..errors import ValidationError

__all__ = ["TABLES", "BY_NAME", "TreeRows", "Unknown", "unknown_scope", "read_tree", "read_db", "key_text", "legacy_files", "UNKNOWN_FILE",
           "document_owner", "document_file", "read_files", "read_db_documents"]


def key_text(key: tuple) -> str:
    """A row key as one string for people and JSON: ``poll-id/voter``."""
    return "/".join(str(k) for k in key)


# ---------------------------------------------------------------------------
# reading the legacy tree

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


class _Entry:
    """One entry of a folder listed through the gate (its own lstat: a link is never followed)."""

    __slots__ = ("name", "path", "mode")

    def __init__(self, folder: str, name: str, mode: int):
        self.name, self.path, self.mode = name, os.path.join(folder, name), mode

    def folder(self) -> bool:
        return _stat.S_ISDIR(self.mode)

    def regular(self) -> bool:
        return _stat.S_ISREG(self.mode)


def _entries(directory: Any, root: Path) -> list[_Entry]:
    """The entries of *directory* by name, without dotfiles (temp files of atomic writes); none if it is missing
    (or became a link or a file since it was looked at: nothing is listed through it).  Through the gate:
    the folder is reached from the root without following a link."""
    folder = str(directory)
    try:
        return [_Entry(folder, name, st.st_mode) for name, st in _files.scan_dir(directory, root=root)
                if not name.startswith(".")]
    except (CorruptFileError, NotADirectoryError):
        return []


def legacy_files(tree: Tree) -> Iterator[tuple[str, str, str, str]]:
    """``(kind, path, owner, stem)`` for every file of the legacy tree, cheaply (no reads).

    kind is the document kind, or ``"unknown"`` for a file the legacy format
    does not define (reported, never read); owner is the agent (node files)
    or the file stem (sessions).  Dotfiles (temp files of atomic writes) are
    skipped.
    """
    # Nothing is followed through a link, and only regular files are documents (CONTRACT "Untrusted
    # files"): a link, FIFO, socket or device where the format expects a file or folder is INVALID, with
    # the reason as the owner; elsewhere it is an unknown file like any other.
    root = tree.root
    tops = {}
    for top in (tree.nodes, tree.shared):
        st = _files.lstat(top, root=root)
        tops[top] = st is None or _stat.S_ISDIR(st.st_mode)
        if not tops[top]:  # a link (or a FIFO, a file) where a top folder should be: never entered
            yield INVALID, str(top), _kind(st.st_mode), ""
    for node in _entries(tree.nodes, root) if tops[tree.nodes] else ():
        if not node.folder():
            yield (INVALID, node.path, _odd(node), "") if not node.regular() else \
                ("unknown", node.path, "", "")
            continue
        folders = []  # inbox/, and leased/ and dead/ (messages received and not acknowledged: docs/delivery.md)
        for entry in _entries(node.path, root):
            name = entry.name
            if name in MESSAGE_DIRS and entry.folder():
                folders.append(entry.path)
            elif name == SENT_KEYS_DIR and entry.folder():
                continue  # the index of idempotent sends: bookkeeping, no rows
            elif name in NODE_FILES and entry.regular():
                yield NODE_FILES[name], entry.path, node.name, layout.stem(name)
            elif name == LIST_INBOX and entry.regular():
                yield MESSAGE_LIST, entry.path, node.name, layout.stem(name)  # an adopted list-file inbox
            elif name in NODE_FILES or name in MESSAGE_DIRS or name == SENT_KEYS_DIR or not entry.regular():
                yield INVALID, entry.path, _odd(entry), ""
            else:
                yield "unknown", entry.path, node.name, ""
        for folder in folders:
            for entry in _entries(folder, root):
                name = entry.name
                if entry.regular():
                    kind = "message" if layout.is_document_name(name) else "unknown"
                    yield kind, entry.path, node.name, layout.stem(name)
                else:
                    yield INVALID, entry.path, _odd(entry), ""
    if not tops[tree.shared]:
        return
    for entry in _entries(tree.shared, root):
        if entry.name == POLLS_FILE and entry.regular():
            yield "polls", entry.path, "", "polls"
        elif entry.name in FOLDER_DOCUMENTS and entry.folder():
            for sub in _entries(entry.path, root):
                name = sub.name
                if layout.is_document_name(name) and sub.regular():
                    yield FOLDER_DOCUMENTS[entry.name], sub.path, layout.stem(name), layout.stem(name)
                elif sub.regular():
                    yield "unknown", sub.path, "", ""
                else:
                    yield INVALID, sub.path, _odd(sub), ""
        elif entry.name == POLLS_FILE or entry.name in FOLDER_DOCUMENTS or not entry.regular():
            yield INVALID, entry.path, _odd(entry), ""
        else:
            yield "unknown", entry.path, "", ""


#: the kind :func:`legacy_files` gives an entry that is not followed or not read (its owner is the reason)
INVALID = "invalid"
_LINK = "a symbolic link (not followed)"


def _odd(entry: _Entry) -> str:
    """Why a directory entry is not read as a legacy document or folder."""
    return _kind(entry.mode)


def _kind(mode: int) -> str:
    if _stat.S_ISLNK(mode):
        return _LINK
    if _stat.S_ISDIR(mode):
        return "a directory where a file should be"
    if _stat.S_ISREG(mode):
        return "a file where a directory should be"
    if _stat.S_ISFIFO(mode):
        return "a FIFO, not a regular file (not opened)"
    if _stat.S_ISSOCK(mode):
        return "a socket, not a regular file (not opened)"
    return "not a regular file: a FIFO, socket or device (not opened)"


#: the ``field`` of a ``dropped_fields`` entry for a whole file the legacy format does not define
UNKNOWN_FILE = "(whole file: not part of the legacy format)"

_scan = json.JSONDecoder().scan_once  # the C scanner, without decode()'s whitespace regexes


_FOLDERS: contextvars.ContextVar = contextvars.ContextVar("federation_rows_folders", default=None)


def _folders_cached(fn: Any) -> Any:
    """Run *fn* with a :class:`federation.stores.files.FolderCache` for :func:`_read_bytes`: a whole-tree read
    walks to each folder once, then reads its files relative to the folder's descriptor."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if _FOLDERS.get() is not None:
            return fn(*args, **kwargs)
        with _files.FolderCache() as cache:
            token = _FOLDERS.set(cache)
            try:
                return fn(*args, **kwargs)
            finally:
                _FOLDERS.reset(token)
    return wrapper


def _read_bytes(path: str) -> bytes:
    """The bytes of the legacy file *path* through the gate: reached from the root above it without following
    a link at any folder, never blocking on a FIFO, never more than the size bound.  FileNotFoundError when
    it is gone."""
    cache = _FOLDERS.get()
    raw = cache.read(path, _root_above) if cache is not None else \
        _files.read_regular(path, root=_root_above(path), limit=MAX_FILE_BYTES)
    if raw is None:
        raise FileNotFoundError(path)
    return raw


def _root_above(path: str) -> str:
    """The federation root above the legacy file *path* (as :func:`legacy_files` or ``read_files`` give it:
    the layout places it, string operations only)."""
    parts = path.split(os.sep)
    for depth in (4, 3, 2):
        if len(parts) > depth and layout.classify(parts[-depth:]) is not None:
            return os.sep.join(parts[:-depth]) or os.sep
    return os.path.dirname(path)  # not a place of the layout: at least the file itself is not followed


def _parse(raw: bytes) -> Any:
    check_depth(raw)  # ValueError: reported as invalid, before the recursive parser sees it
    try:
        text = raw.decode("utf-8")
        value, end = _scan(text, 0)
        if end == len(text) or text[end:].isspace():
            return value
    except (ValueError, StopIteration):  # UnicodeDecodeError is a ValueError
        pass
    return parse_json_bytes(raw)  # leading space or an error: parse again, carefully, for the reason


@_folders_cached
def read_tree(root: Path, progress: bool = False) -> TreeRows:
    """Read every legacy file under *root* into rows; never modifies a file.

    A document that does not parse is read again under its document's lock, a few times over about
    0.2 s (a legacy writer outside the shim writes in place: torn is waited out); only one still
    unreadable then is *unknown* (:class:`Unknown`), like a link or FIFO where the layout keeps a document.
    """
    tree = Tree(root)
    out = TreeRows(root=str(tree.root))
    files = list(legacy_files(tree))
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(files), unit="file", desc="reading", leave=False, mininterval=0.25)
    valid_agents: dict[str, bool] = {}
    torn: list[tuple[str, str, str, str]] = []
    for n, (kind, path, owner, stem) in enumerate(files):
        if bar is not None and n % 512 == 0:
            bar.n = n
            bar.refresh()
        if kind == "unknown":  # not the legacy format's: nothing is imported from it, and it is said
            out.dropped_fields.append({"path": path, "field": UNKNOWN_FILE})
            continue
        if kind == INVALID:  # a link or special file: not followed, not opened
            out.invalid.append({"path": path, "reason": owner})
            unknown_scope(out.root, path, owner, out.unknown)
            continue
        # a file listed then gone (a message claimed meanwhile) holds no rows: not an unreadable file
        if _read_file(out, kind, path, owner, stem, valid_agents, missing_ok=True):
            torn.append((kind, path, owner, stem))
    if torn:
        settle_torn(tree, out, torn, valid_agents)
    out.files = len(files) - sum(1 for f in files if f[0] in ("unknown", INVALID))
    if bar is not None:
        bar.n = len(files)
        bar.close()
    return out


def _lock_of(kind: str, owner: str) -> str | None:
    try:
        return document_lock("message" if kind == MESSAGE_LIST else kind, owner)
    except ValidationError:  # a name no writer can lock: nobody writes it through the shim
        return None


def settle_torn(tree: Tree, out: TreeRows, torn: list[tuple[str, str, str, str]],
                valid_agents: dict[str, bool]) -> None:
    """Re-read the documents *torn* (``(kind, path, owner, stem)``, each found not parsing) under their
    document locks, pausing between rounds (:data:`files.TORN_PAUSES`, ~0.2 s in all, whatever their
    number); a document that parses replaces its failure in *out*, one that never does stays unknown."""
    from ..stores.files import TORN_PAUSES, note_torn

    left = list(torn)
    for pause in TORN_PAUSES:
        if not left:
            return
        time.sleep(pause)
        still = []
        for entry in left:
            fresh = TreeRows(root=out.root)
            with _holding_quietly(tree, _lock_of(entry[0], entry[2])):
                failed = _read_file(fresh, *entry, valid_agents, missing_ok=True)
            if failed:
                still.append(entry)
            else:
                _replace(out, entry[1], fresh)
                note_torn(entry[1], recovered=True)
        left = still
    # what never parsed is listed as invalid (and unknown) by the caller: corrupt, not torn (nothing logged)


@contextlib.contextmanager
def _holding_quietly(tree: Tree, name: str | None) -> Iterator[None]:
    """The document lock *name* when its lock file exists and can be taken (a read never creates one: a dry run
    writes nothing, and a document no writer ever locked has no shim writer to wait for; a read-only root
    takes none: the re-reads still help)."""
    from ..errors import FileStorageError
    from ..stores.files import entry_kind, locked

    exists = name is not None and entry_kind(tree.lock_path(name), root=tree.root) is not None
    lock = locked(tree, name) if exists else None
    try:
        if lock is not None:
            lock.__enter__()
    except (OSError, FileStorageError, CorruptFileError):
        lock = None
    try:
        yield
    finally:
        if lock is not None:
            lock.__exit__(None, None, None)


def _replace(out: TreeRows, path: str, fresh: TreeRows) -> None:
    """*out* with what *fresh* read of the file *path* in place of its earlier failure."""
    out.invalid[:] = [i for i in out.invalid if i["path"] != path] + fresh.invalid
    out.unknown.drop(path)
    out.unknown.merge(fresh.unknown)
    out.dropped_fields += fresh.dropped_fields
    for table in TABLES:
        for key, row in fresh.rows[table.name].items():
            out.add(table.name, row, fresh.sources[table.name][key])


def _read_file(out: TreeRows, kind: str, path: str, owner: str, stem: str, valid_agents: dict[str, bool],
               missing_ok: bool = False) -> bool:
    """Read one legacy file of document *kind* into *out* (a file that cannot be read is reported in it, and
    its documents are unknown).  True when it did not parse: it may be torn (:func:`settle_torn`)."""
    try:
        if kind != "polls" and kind not in FOLDER_OF:
            ok = valid_agents.get(owner)
            if ok is None:
                ok = valid_agents[owner] = _validate.is_agent(owner)
            if not ok:
                raise _Invalid(f"{owner!r} is not a valid agent name")
        raw = _read_bytes(path)
        try:
            data = _parse(raw)
        except ValueError as exc:  # cut short or written in place by a legacy writer, or corrupt for good
            _unreadable(out, path, str(exc) or type(exc).__name__)
            return True
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
    except CorruptFileError as exc:
        _unreadable(out, path, exc.reason)
    except (_Invalid, ValueError, ValidationError, OSError, RecursionError) as exc:
        if missing_ok and isinstance(exc, FileNotFoundError):  # no such document: no rows
            return False
        _unreadable(out, path, str(exc) or type(exc).__name__)
    return False


def _unreadable(out: TreeRows, path: str, reason: str) -> None:
    out.invalid.append({"path": path, "reason": reason})
    unknown_scope(out.root, path, reason, out.unknown)


# ---------------------------------------------------------------------------
# one document at a time (``sync`` re-reads what it repairs under the document's lock)


def document_owner(entity: Entity, row: tuple) -> str:
    """Whose legacy document holds *row* of *entity*: the recipient of a message, else the first key field
    (agent, poll id, session id).  With the document kind, what :func:`entities.document_lock` takes."""
    return str(row[_RECIPIENT] if entity is MESSAGES else row[0])


_RECIPIENT = MESSAGES.index("recipient")


def _classify(root: str, path: str) -> tuple[str, str, str, str] | None:
    """``(kind, path, owner, stem)`` of a legacy file under *root*, as :func:`legacy_files` gives it; None if
    not one (string operations: sync classifies every file it re-reads)."""
    if not path.startswith(root):
        return None
    found = layout.classify(path[len(root):].split(os.sep))
    return None if found is None else (found[0], path, found[1], found[2])


@_folders_cached
def read_files(tree: Tree, paths: Iterable[Path | str]) -> TreeRows:
    """The rows of the legacy files *paths* (each read once; a missing file holds no rows)."""
    out = TreeRows(root=str(tree.root))
    valid_agents: dict[str, bool] = {}
    root = os.path.join(str(tree.root), "")
    torn = []
    for path in sorted({str(p) for p in paths}):
        entry = _classify(root, path)
        if entry is not None and _read_file(out, *entry, valid_agents, missing_ok=True):
            torn.append(entry)
    if torn:  # the caller may hold these documents' locks already: the locks are re-entrant
        settle_torn(tree, out, torn, valid_agents)
    return out


def document_rows(tree: Tree, kind: str, owner: str, data: Any) -> TreeRows:
    """The rows of one legacy document *data* of *kind* (a node file, or a session: *owner* is the agent or
    session id), read as if from its file: what :mod:`federation.adopt` writes to the database after merging
    a save into the database's record.  What cannot be read is in ``invalid``."""
    out = TreeRows(root=str(tree.root))
    path = str(layout.document_file(tree, kind, owner, owner))
    try:
        if kind == "expertise":
            _expertise(out, path, data, owner)
        elif kind in FOLDER_OF:
            _folder_document(out, path, data, kind, owner)
        else:
            _node_document(out, path, data, _NODE_ENTITY[kind], owner)
    except (_Invalid, ValueError, ValidationError) as exc:
        out.invalid.append({"path": path, "reason": str(exc) or type(exc).__name__})
    return out


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


def read_db_documents(tx: Any, docs: Iterable[tuple[str, str]]) -> dict[str, dict[tuple, tuple]]:
    """The file-side database rows of the documents *docs* ``(kind, doc_id)``, keyed like :func:`read_db`.

    Runs in the caller's transaction *tx*: ``sync --to db`` reads and repairs in one.
    """
    ids: dict[str, list[str]] = {}
    for kind, doc_id in sorted(set(docs)):
        ids.setdefault(kind, []).append(doc_id)
    out: dict[str, dict[tuple, tuple]] = {t.name: {} for t in TABLES}
    for kind, wanted in ids.items():
        for table in _TABLES_OF[kind]:
            k = table.key
            rows = out[table.name]
            for start in range(0, len(wanted), _CHUNK):
                chunk = wanted[start:start + _CHUNK]
                for r in tx.fetchall(_sql.select_documents(table, len(chunk)), chunk):
                    r = tuple(r)
                    rows[r[:k]] = r
    return out


_CHUNK = 500  # ids per SELECT … IN (…): well under SQLite's and PostgreSQL's parameter limits


_TABLES_OF = {kind: tuple(t for t in TABLES if t.document == kind) for kind in {t.document for t in TABLES}}


# ---------------------------------------------------------------------------
# reading the database


def read_db(store: Any) -> dict[str, dict[tuple, tuple]]:
    """The database rows that have a file counterpart, per table, keyed like :func:`read_tree`."""

    def fn(tx) -> dict[str, dict[tuple, tuple]]:
        out = {}
        for table in TABLES:
            k = table.key
            out[table.name] = {r[:k]: r for r in map(tuple, tx.fetchall(_sql.select_file_side(table)))}
        return out

    return store.db.read(fn)


# ---------------------------------------------------------------------------
# unknown: what could not be read is never read as empty (CONTRACT "Unknown is never empty")

#: the document kinds kept under nodes/{agent}/, and under shared/
_NODE_KINDS = ("message", *NODE_FILES.values())
_SHARED_KINDS = ("polls", *FOLDER_OF)


@dataclasses.dataclass
class Unknown:
    """The legacy documents a read could not read, as scopes: every document of a kind (``shared/polls.json``
    torn, ``nodes/`` a link), every document of a kind owned by an agent (``nodes/bob`` or its ``inbox/`` a
    link), or one document (``(kind, id)``).  A record under one of them is neither compared nor synced from
    the files: its file side is not "empty", it is unknown."""

    kinds: set[str] = dataclasses.field(default_factory=set)
    owners: set[tuple[str, str]] = dataclasses.field(default_factory=set)
    docs: set[tuple[str, str]] = dataclasses.field(default_factory=set)
    #: what could not be read: ``(path, reason, kind, owner or None, doc id or None)``, once each
    listed: list[tuple[str, str, str, str | None, str | None]] = dataclasses.field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.listed)

    def add(self, path: str, reason: str, kind: str, *, owner: str | None = None, doc_id: str | None = None) -> None:
        entry = (path, reason, kind, owner, doc_id)
        if entry in self.listed:
            return
        self.listed.append(entry)
        if doc_id is not None:
            self.docs.add((kind, doc_id))
        elif owner is not None:
            self.owners.add((kind, owner))
        else:
            self.kinds.add(kind)

    def covers(self, table: Entity, row: tuple) -> bool:
        """Whether *row* of *table* belongs to a document that could not be read."""
        kind = table.document
        if kind in self.kinds or (kind, str(row[0])) in self.docs:
            return True
        return bool(self.owners) and (kind, document_owner(table, row)) in self.owners

    def merge(self, other: "Unknown") -> None:
        for entry in other.listed:
            self.add(entry[0], entry[1], entry[2], owner=entry[3], doc_id=entry[4])

    def drop(self, path: str) -> None:
        """Forget what was unknown because of *path* (read again, and readable now)."""
        kept = [e for e in self.listed if e[0] != path]
        self.kinds, self.owners, self.docs, self.listed = set(), set(), set(), []
        for entry in kept:
            self.add(entry[0], entry[1], entry[2], owner=entry[3], doc_id=entry[4])

    def only(self, kinds: set[str] | None) -> "Unknown":
        """The part about documents of *kinds* (all with None)."""
        out = Unknown()
        for e in self.listed:
            if kinds is None or e[2] in kinds:
                out.add(e[0], e[1], e[2], owner=e[3], doc_id=e[4])
        return out

    def entries(self) -> list[dict[str, str]]:
        """``[{"path", "reason"}]`` for people and JSON, once per path and reason, by path."""
        return [{"path": p, "reason": r} for p, r in sorted({(e[0], e[1]) for e in self.listed})]

    def tables(self) -> set[str]:
        """The tables with a record that may be under an unknown document."""
        kinds = {e[2] for e in self.listed}
        return {t.name for t in TABLES if t.document in kinds}

    def entities(self) -> list[str]:
        """The ``sync --only`` entities naming these documents (a document's top table: a poll brings its votes)."""
        tables = self.tables()
        return [t.name for t in TABLES if t.parent is None and t.name in tables]


def unknown_scope(root: str, path: str, reason: str, out: Unknown) -> None:
    """Record in *out* which documents the unreadable entry *path* (a file or a folder of the layout, found
    not readable: a link, a FIFO, torn, invalid) holds.  An entry where the layout keeps no document (an
    unknown file that is a FIFO, say) holds none."""
    top = os.path.join(root, "")
    if not path.startswith(top):
        return
    parts = path[len(top):].split(os.sep)
    n, first = len(parts), parts[0]
    if first == layout.NODES_DIR:
        if n == 1:
            for kind in _NODE_KINDS:
                out.add(path, reason, kind)
        elif n == 2:
            for kind in _NODE_KINDS:
                out.add(path, reason, kind, owner=parts[1])
        elif n == 3 and (parts[2] in MESSAGE_DIRS or parts[2] == LIST_INBOX):
            out.add(path, reason, "message", owner=parts[1])
        elif n == 3 and parts[2] in NODE_FILES:
            out.add(path, reason, NODE_FILES[parts[2]], doc_id=parts[1])
        elif n == 4 and parts[2] in MESSAGE_DIRS and layout.is_document_name(parts[3]):
            out.add(path, reason, "message", doc_id=layout.stem(parts[3]))
    elif first == layout.SHARED_DIR:
        if n == 1:
            for kind in _SHARED_KINDS:
                out.add(path, reason, kind)
        elif n == 2 and parts[1] == POLLS_FILE:
            out.add(path, reason, "polls")
        elif n == 2 and parts[1] in FOLDER_DOCUMENTS:
            out.add(path, reason, FOLDER_DOCUMENTS[parts[1]])
        elif n == 3 and parts[1] in FOLDER_DOCUMENTS and layout.is_document_name(parts[2]):
            out.add(path, reason, FOLDER_DOCUMENTS[parts[1]], doc_id=layout.stem(parts[2]))
