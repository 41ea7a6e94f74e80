"""Repair: make one side equal the other where the consistency report finds them apart.

``federation sync --to db`` re-imports file content over the database for the
keys that differ (upserting what the files have, removing what they lack);
``federation sync --to files`` rewrites the legacy documents from the
database, so that a rollback to phase 1 after drift is exact.  Both touch only
what the report lists, and with ``dry_run`` only say what they would change.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from pathlib import Path
from typing import Any

from . import _sql, config
from ._clock import now
from ._files import Tree, atomic_write_json, locked, read_json, remove
from ._rows import BY_NAME, TABLES, key_text
from .entities import MESSAGES, POLLS_LOCK, Entity, document_lock
from .errors import CorruptFileError
from .migrate import insert_values
from .report import Report, Sides, compare_sides, database_exists, read_sides

__all__ = ["Change", "SyncResult", "sync", "TARGETS"]

TARGETS = ("files", "db")


@dataclasses.dataclass(frozen=True)
class Change:
    action: str  # upsert | delete | mark-read (db); write | delete (files)
    target: str  # a table, or a file path
    key: str

    def __str__(self) -> str:
        return f"{self.action:9} {self.target}  {self.key}"


@dataclasses.dataclass
class SyncResult:
    to: str
    dry_run: bool
    changes: list[Change]

    def to_json(self) -> dict[str, Any]:
        return {"to": self.to, "dry_run": self.dry_run, "changes": [dataclasses.asdict(c) for c in self.changes]}


def sync(to: str, *, root: Path | None = None, dry_run: bool = False, store: Any = None) -> SyncResult:
    """Rewrite side *to* (``"files"`` or ``"db"``) to equal the other side."""
    if to not in TARGETS:
        raise ValueError(f"to must be one of {TARGETS}, not {to!r}")
    settings = config.settings()
    root = Path(root) if root is not None else settings.root
    if store is None and (not dry_run or database_exists(settings)):
        from .sqlstore import get_store

        store = get_store(settings)  # a dry run never creates the database: none is compared as empty
    sides = read_sides(root, store=store)
    report = compare_sides(sides)
    if to == "db":
        return SyncResult(to, dry_run, _to_db(store, sides, report, dry_run))
    return SyncResult(to, dry_run, _to_files(store, Tree(root), sides, report, dry_run))


# ---------------------------------------------------------------------------
# files -> database


def _to_db(store: Any, sides: Sides, report: Report, dry_run: bool) -> list[Change]:
    files = sides.files.rows
    upserts: list[tuple[Entity, list[tuple]]] = []
    deletes: list[tuple[Entity, list[tuple]]] = []
    changes: list[Change] = []
    for table in TABLES:  # parents first
        t = report.entities[table.name]
        keys = sorted(t.missing_in_db + t.different)
        if keys:
            upserts.append((table, [files[table.name][k] for k in keys]))
            changes += [Change("upsert", table.name, key_text(k)) for k in keys]
    for table in reversed(TABLES):  # children first
        keys = report.entities[table.name].missing_in_files
        if keys:
            deletes.append((table, keys))
            # a message without a file was read (legacy deletes read messages): mark it so
            action = "mark-read" if table.db_filter else "delete"
            changes += [Change(action, table.name, key_text(k)) for k in keys]
    if dry_run or not changes:
        return changes
    stamp = now()

    def fn(tx) -> None:
        for table, keys in deletes:
            if table.db_filter:
                tx.executemany(_sql.mark_read(table), [(stamp, *k) for k in keys])
            else:
                tx.executemany(_sql.delete_by_key(table), keys)
        for table, rows in upserts:
            tx.executemany(_sql.upsert(table, extra=True), insert_values(table, rows, files))

    store.db.write(fn)  # one transaction: the repair happens whole or not at all
    return changes


# ---------------------------------------------------------------------------
# database -> files


def _affected(report: Report) -> dict[str, set[str]]:
    """The legacy documents holding a differing row: {document kind: {document id}}."""
    out: dict[str, set[str]] = {}
    for name, t in report.entities.items():
        doc = BY_NAME[name].document
        for key in (*t.missing_in_db, *t.missing_in_files, *t.different):
            out.setdefault(doc, set()).add(str(key[0]))
    return out


def _to_files(store: Any, tree: Tree, sides: Sides, report: Report, dry_run: bool) -> list[Change]:
    changes: list[Change] = []
    affected = _affected(report)
    sources = sides.files.sources
    db_messages = sides.db["messages"]

    def put(path: Path | str, doc: Any, key: str, lock: str) -> None:
        changes.append(Change("write", str(path), key))
        if not dry_run:  # a dry run takes no lock either: it creates nothing, not even .locks/
            with locked(tree, lock):
                atomic_write_json(Path(path), doc)

    def drop(path: Path | str | None, key: str, lock: str) -> None:
        if path is None or not os.path.exists(path):
            return
        changes.append(Change("delete", str(path), key))
        if not dry_run:
            with locked(tree, lock):
                remove(Path(path))

    def inbox_lock(path: str) -> str:
        return document_lock("message", Path(path).parent.parent.name)  # nodes/{agent}/inbox/{id}.json

    for mid in sorted(affected.get("message", ())):
        row = db_messages.get((mid,))
        old = sources["messages"].get((mid,))
        if row is None:  # read or gone in the database: no unread file
            if old:
                drop(old, mid, inbox_lock(old))
            continue
        msg = MESSAGES.from_row(row)
        path = tree.message_file(msg["recipient"], mid)
        if old and Path(old) != path:
            drop(old, mid, inbox_lock(old))
        put(path, msg, mid, inbox_lock(str(path)))

    db = sides.db

    def document(in_db: bool, load: Any, doc_id: str) -> Any:
        """The database's document (True in a dry run, which reads nothing more), or None."""
        if not in_db:
            return None
        return True if dry_run else load(doc_id)

    node_docs = (("context", lambda a: (a,) in db["context"], "load_context", tree.context_file),
                 ("expertise", lambda a: any(k[0] == a for k in db["expertise"]), "load_expertise",
                  tree.expertise_file),
                 ("profile", lambda a: (a,) in db["profiles"], "load_profile", tree.profile_file))
    for kind, in_db, load, path_of in node_docs:
        for agent in sorted(affected.get(kind, ())):
            doc = document(in_db(agent), lambda a, load=load: getattr(store, load)(a), agent)
            if doc is None:
                drop(path_of(agent), agent, document_lock(kind, agent))
            else:
                put(path_of(agent), doc, agent, document_lock(kind, agent))

    poll_ids = sorted(affected.get("polls", ()))
    if poll_ids:
        with locked(tree, POLLS_LOCK) if not dry_run else contextlib.nullcontext():
            try:
                doc = read_json(tree.polls_file, dict, {})
            except CorruptFileError:
                doc = {}  # unreadable: rebuilt from the database, poll by poll
            for pid in poll_ids:
                poll = document((pid,) in db["polls"], lambda p: store.load_poll(p), pid)
                if poll is None:
                    doc.pop(pid, None)
                else:
                    doc[pid] = poll
            put(tree.polls_file, doc, ", ".join(poll_ids), POLLS_LOCK)

    for sid in sorted(affected.get("session", ())):
        session = document((sid,) in db["sessions"], lambda s: store.load_session(s), sid)
        if session is None:
            drop(tree.session_file(sid), sid, document_lock("session", sid))
        else:
            put(tree.session_file(sid), session, sid, document_lock("session", sid))
    return changes
