"""The consistency report: the whole file tree against the whole database.

``federation report`` = ``python scripts/consistency_report.py``.  Table by
table: row counts, keys missing on either side, and records that differ, with
a field-level diff of the first few (:mod:`federation.domain.compare`, the
comparison the shim's shadow reads are given too, so both agree on what
"equal" means).  Only unread messages have a file counterpart.

``report --log`` (the shadow events of a log, with the fleet's counted
comparisons) is the rollout's: :mod:`federation.rollout._log_summary`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from pathlib import Path
from typing import Any, Iterator

from .. import config
from .rows import (BY_NAME, TABLES, TreeRows, Unknown, document_file, document_owner, key_text, read_db, read_db_documents,
                   read_files, read_tree)
from ..stores.database import database_exists
from ..stores.files import Tree, locked
from ..domain.compare import field_diff, normalize
from ..domain.entities import MESSAGES, Entity, document_lock
from ..domain.layout import MESSAGE_DIRS, document_name, message_owner
from ..errors import FileStorageError

__all__ = ["TableReport", "Report", "Sides", "read_sides", "compare_sides", "build_report", "compare_table", "DIFF_LIMIT",
           "recheck_differences", "Doc"]

#: How many differing records of a table get a field-level diff.
DIFF_LIMIT = 5


@dataclasses.dataclass
class TableReport:
    files: int
    rows: int
    missing_in_db: list[tuple] = dataclasses.field(default_factory=list)
    missing_in_files: list[tuple] = dataclasses.field(default_factory=list)
    different: list[tuple] = dataclasses.field(default_factory=list)
    diffs: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    @property
    def consistent(self) -> bool:
        return not (self.missing_in_db or self.missing_in_files or self.different)

    def to_json(self) -> dict[str, Any]:
        return {"files": self.files, "rows": self.rows,
                "missing_in_db": [key_text(k) for k in self.missing_in_db],
                "missing_in_files": [key_text(k) for k in self.missing_in_files],
                "different": [key_text(k) for k in self.different], "diffs": self.diffs}


@dataclasses.dataclass
class Report:
    entities: dict[str, TableReport]
    invalid: list[dict[str, str]]
    #: the documents that could not be read (:class:`rows.Unknown`): their records were not compared
    unknown: Unknown = dataclasses.field(default_factory=Unknown)

    @property
    def consistent(self) -> bool:
        """True only when everything was read and agrees: nothing unknown is ever called consistent."""
        return not self.unknown and all(t.consistent for t in self.entities.values())

    @property
    def differences(self) -> int:
        return sum(len(t.missing_in_db) + len(t.missing_in_files) + len(t.different) for t in self.entities.values())

    def to_json(self) -> dict[str, Any]:
        return {"consistent": self.consistent, "entities": {n: t.to_json() for n, t in self.entities.items()},
                "invalid": self.invalid, "unknown": self.unknown.entries()}


def compare_table(table: Entity, files: dict[tuple, tuple], rows: dict[tuple, tuple],
                  diff_limit: int = DIFF_LIMIT) -> TableReport:
    """Compare one table's file rows with its database rows, key by key."""
    out = TableReport(files=len(files), rows=len(rows))
    cols = table.columns
    for key, frow in files.items():
        drow = rows.get(key)
        if drow is None:
            out.missing_in_db.append(key)
            continue
        if frow == drow:  # the common case, without building dicts
            continue
        a, b = normalize(dict(zip(cols, frow))), normalize(dict(zip(cols, drow)))
        if a == b:
            continue
        out.different.append(key)
        if len(out.diffs) < diff_limit:
            out.diffs += [{"key": key_text(key), "field": f, "files": va, "db": vb} for f, va, vb in field_diff(a, b)]
    out.missing_in_files = [k for k in rows if k not in files]
    for keys in (out.missing_in_db, out.missing_in_files, out.different):
        keys.sort()
    return out


@dataclasses.dataclass
class Sides:
    """The rows of both sides: what a report compares and ``sync`` copies."""

    files: TreeRows
    db: dict[str, dict[tuple, tuple]]


def read_sides(root: Path | None = None, *, store: Any = None, progress: bool = False,
               settings: config.Settings) -> Sides:
    """Read the legacy tree under *root* and the database as rows (never writes to either).

    A SQLite database that does not exist yet reads as empty, and is not created.  *settings*: the
    federation read; *root*, when given, wins over its root.
    """
    root = Path(root) if root is not None else settings.root
    files = read_tree(root, progress=progress)
    if store is None and database_exists(settings):
        from ..stores.sqlstore import get_store

        store = get_store(settings)
    return Sides(files, read_db(store) if store is not None else {t.name: {} for t in TABLES})


def compare_sides(sides: Sides, diff_limit: int = DIFF_LIMIT) -> Report:
    """The report of *sides*, table by table.  The records of a document that could not be read on the file
    side are compared on neither side (unknown is not empty): the report lists the document instead."""
    unknown = sides.files.unknown
    hidden = unknown.tables() if unknown else set()
    entities = {}
    for t in TABLES:
        files, db = sides.files.rows[t.name], sides.db[t.name]
        if t.name in hidden:
            files = {k: r for k, r in files.items() if not unknown.covers(t, r)}
            db = {k: r for k, r in db.items() if not unknown.covers(t, r)}
        entities[t.name] = compare_table(t, files, db, diff_limit)
    return Report(entities, sides.files.invalid, unknown)


def build_report(root: Path | None = None, *, store: Any = None, progress: bool = False,
                 diff_limit: int = DIFF_LIMIT, recheck: bool = False,
                 settings: config.Settings) -> Report:
    """Compare the legacy tree under *root* with the database (never writes to either).

    A SQLite database that does not exist yet is compared as empty, and not created.
    recheck: re-read each difference under its document's lock before reporting it (a write in
    flight is not a difference; :func:`recheck_differences`).  *settings*: the federation compared
    (handed down by the caller).
    """
    if recheck and store is None and database_exists(settings):
        from ..stores.sqlstore import get_store

        store = get_store(settings)
    sides = read_sides(root, store=store, progress=progress, settings=settings)
    report = compare_sides(sides, diff_limit)
    if recheck and not report.consistent:
        report = recheck_differences(Path(root) if root is not None else settings.root, sides, report, store)
    return report


# ---------------------------------------------------------------------------
# a second look under the locks (report --recheck, sync, doctor)

#: a legacy document: (kind, id) -- kind as :attr:`Entity.document`, id its records' first key field
Doc = tuple[str, str]


def recheck_differences(root: Path, sides: Sides, report: Report, store: Any) -> Report:
    """*report* with only the differences still there when each document is re-read from both sides under
    its file lock (the lock every dual-phase write of it holds across both sides): a write in flight when
    *sides* was read is not a difference.  Without a database (*store* None) nothing can be in flight."""
    if store is None or not report.differences:
        return report
    tree = Tree(root)
    fresh: list[Report] = []
    for locks, (docs, paths) in sorted(lock_groups(tree, sides, report).items()):
        try:
            with holding(tree, locks):
                fresh.append(_read_docs(store, tree, docs, paths))
        except (OSError, FileStorageError):  # a read-only root takes no lock: a second read, as the guards do
            first = _read_docs(store, tree, docs, paths)
            second = _read_docs(store, tree, docs, paths)
            fresh.append(_both(first, second))
    unknown = Unknown()
    unknown.merge(report.unknown)
    for r in fresh:  # a document torn at the second look is unknown too
        unknown.merge(r.unknown)
    entities = {}
    for name, t in report.entities.items():
        out = TableReport(files=t.files, rows=t.rows)
        for r in fresh:
            f = r.entities[name]
            out.missing_in_db += f.missing_in_db
            out.missing_in_files += f.missing_in_files
            out.different += f.different
            out.diffs += f.diffs[: max(0, DIFF_LIMIT - len(out.diffs))]
        for keys in (out.missing_in_db, out.missing_in_files, out.different):
            keys.sort()
        entities[name] = out
    return Report(entities, report.invalid, unknown)


def _read_docs(store: Any, tree: Tree, docs: set[Doc], paths: set[str]) -> Report:
    files = only_documents(read_files(tree, paths), docs)
    return compare_sides(Sides(files, store.db.read(lambda tx: read_db_documents(tx, docs))))


def _both(a: Report, b: Report) -> Report:
    """What two reports both find different (the same key in the same way)."""
    out = {}
    for name, t in a.entities.items():
        u = b.entities[name]
        out[name] = TableReport(t.files, t.rows, [k for k in t.missing_in_db if k in set(u.missing_in_db)],
                                [k for k in t.missing_in_files if k in set(u.missing_in_files)],
                                [k for k in t.different if k in set(u.different)], t.diffs)
    unknown = Unknown()
    unknown.merge(a.unknown)
    unknown.merge(b.unknown)
    return Report(out, a.invalid, unknown)


# ---------------------------------------------------------------------------
# documents and their locks


def lock_groups(tree: Tree, sides: Sides, report: Report) -> dict[tuple[str, ...], tuple[set[Doc], set[str]]]:
    """The documents the report finds different, grouped by the file locks that guard them:
    {locks: (documents, the files to re-read for them)}.  A message's lock is its recipient's inbox on
    either side (and the inbox its file was found in); every other document has one owner."""
    locks_of: dict[Doc, set[str]] = {}
    paths_of: dict[Doc, set[str]] = {}
    for name, t in report.entities.items():
        table = BY_NAME[name]
        files, db, sources = sides.files.rows[name], sides.db[name], sides.files.sources[name]
        for key in (*t.missing_in_db, *t.missing_in_files, *t.different):
            doc = (table.document, str(key[0]))
            owners = {document_owner(table, row) for row in (files.get(key), db.get(key)) if row is not None}
            paths = paths_of.setdefault(doc, set())
            source = sources.get(key)
            canonical = None  # the owner whose document the source already is
            if source is not None:
                paths.add(source)
                if table is MESSAGES:  # nodes/{agent}/inbox/{id}.json
                    owner = message_owner(source)
                    owners.add(owner)
                    canonical = owner if os.path.basename(source) == document_name(doc[1]) else None
            for owner in owners:
                if owner != canonical:  # (100,000 messages: no path built for a file already listed)
                    paths.add(str(document_file(tree, doc[0], doc[1], owner)))
                if table is MESSAGES:  # received meanwhile: its file side is in leased/ or dead/ now
                    paths.update(str(tree.message_file_in(folder, owner, doc[1])) for folder in MESSAGE_DIRS[1:])
            locks_of.setdefault(doc, set()).update(document_lock(doc[0], owner) for owner in owners)
    groups: dict[tuple[str, ...], tuple[set[Doc], set[str]]] = {}
    for doc, locks in locks_of.items():
        docs, paths = groups.setdefault(tuple(sorted(locks)), (set(), set()))
        docs.add(doc)
        paths |= paths_of[doc]
    return groups


@contextlib.contextmanager
def holding(tree: Tree, locks: tuple[str, ...]) -> Iterator[None]:
    # in name order, as the shim takes a broadcast's inbox locks: no two holders wait on each other crosswise
    with contextlib.ExitStack() as stack:
        for name in locks:
            stack.enter_context(locked(tree, name))
        yield


def only_documents(rows: TreeRows, docs: set[Doc]) -> TreeRows:
    """*rows* restricted to the records of *docs* (polls.json holds every poll, a re-read all of them)."""
    out = TreeRows(invalid=rows.invalid, dropped_fields=rows.dropped_fields, files=rows.files, unknown=rows.unknown,
                   root=rows.root)
    for table in TABLES:
        kind, name = table.document, table.name
        keep = [k for k in rows.rows[name] if (kind, str(k[0])) in docs]
        out.rows[name] = {k: rows.rows[name][k] for k in keep}
        out.sources[name] = {k: rows.sources[name][k] for k in keep if k in rows.sources[name]}
    return out
