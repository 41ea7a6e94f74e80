"""The row/transfer layer: the legacy file tree and the database as the same tables of rows.

The entity descriptions (:mod:`federation.domain.entities`) drive the migration, the
consistency report and ``sync``: :func:`read_tree` turns every legacy file
into rows of the schema's tables (reporting each malformed file by path and
reason, and each field the schema has no place for), :func:`read_db` reads
the same rows from the database.  A row is a tuple in ``Entity.columns``
order, keyed by the tuple of its primary-key columns.

Written by concern: the tree listed (:mod:`.listing`), a document's rows entity by
entity (:mod:`.documents`), what could not be read (:mod:`.unknown`); this module reads
the whole tree or some of its files (a torn file read again under its lock) and the
database, and is the face the transfer commands import.

Only unread messages have a file counterpart, so the database side of
``messages`` is its unread rows; ``message_history`` has no file side.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import json
import os
import time
from pathlib import Path
from typing import Any, Iterable, Iterator

from ..stores import sqltext as _sql
from ..domain import validate as _validate
from ..stores import files as _files
from ..stores.files import MAX_FILE_BYTES, Tree, check_depth, parse_json_bytes
from ..errors import CorruptFileError
from ..domain.entities import BY_NAME, TABLES, InvalidRecord, document_lock
from ..domain import layout
from ..domain.layout import FOLDER_OF, MESSAGE_LIST, document_file
from ..errors import ValidationError
from .documents import TreeRows, document_rows, key_text, read_document
from .listing import INVALID, UNKNOWN_FILE, classify, legacy_files
from .unknown import Unknown, document_owner, unknown_scope

__all__ = ["TABLES", "BY_NAME", "TreeRows", "Unknown", "unknown_scope", "read_tree", "read_db", "key_text", "legacy_files", "UNKNOWN_FILE",
           "document_owner", "document_file", "read_files", "read_db_documents", "document_rows"]

_Invalid = InvalidRecord


# ---------------------------------------------------------------------------
# reading the legacy tree: through the gate, one walk per folder; a torn file read again under its lock

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
        read_document(out, kind, path, data, owner, stem)
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
# some files at a time (``sync`` re-reads what it repairs under the document's lock)


@_folders_cached
def read_files(tree: Tree, paths: Iterable[Path | str]) -> TreeRows:
    """The rows of the legacy files *paths* (each read once; a missing file holds no rows)."""
    out = TreeRows(root=str(tree.root))
    valid_agents: dict[str, bool] = {}
    root = os.path.join(str(tree.root), "")
    torn = []
    for path in sorted({str(p) for p in paths}):
        entry = classify(root, path)
        if entry is not None and _read_file(out, *entry, valid_agents, missing_ok=True):
            torn.append(entry)
    if torn:  # the caller may hold these documents' locks already: the locks are re-entrant
        settle_torn(tree, out, torn, valid_agents)
    return out


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
