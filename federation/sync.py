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

from . import config
from ._clock import now
from ._files import Tree, atomic_write_json, locked, read_json, remove
from ._tables import BY_NAME, TABLES, Table, key_text
from .core import MESSAGE_FIELDS
from .errors import CorruptFileError
from .migrate import insert_sql, insert_values
from .report import Report, build_report, database_exists

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
    report = build_report(root, store=store)
    if to == "db":
        return SyncResult(to, dry_run, _to_db(store, report, dry_run))
    return SyncResult(to, dry_run, _to_files(store, Tree(root), report, dry_run))


# ---------------------------------------------------------------------------
# files -> database


def _upsert_sql(table: Table) -> str:
    rest = table.columns[table.key:]
    return insert_sql(table, "DO UPDATE SET " + ", ".join(f"{c} = excluded.{c}" for c in rest))


def _where_key(table: Table) -> str:
    return " AND ".join(f"{c} = ?" for c in table.key_columns)


def _to_db(store: Any, report: Report, dry_run: bool) -> list[Change]:
    files = report.file_side.rows
    upserts: list[tuple[Table, list[tuple]]] = []
    deletes: list[tuple[Table, list[tuple]]] = []
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
                tx.executemany(f"UPDATE {table.name} SET read_at = ? WHERE {_where_key(table)} AND read_at IS NULL",
                               [(stamp, *k) for k in keys])
            else:
                tx.executemany(f"DELETE FROM {table.name} WHERE {_where_key(table)}", keys)
        for table, rows in upserts:
            tx.executemany(_upsert_sql(table), insert_values(table, rows, files))

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


def _to_files(store: Any, tree: Tree, report: Report, dry_run: bool) -> list[Change]:
    changes: list[Change] = []
    affected = _affected(report)
    sources = report.file_side.sources
    db_messages = report.db_side["messages"]

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
        return f"inbox-{Path(path).parent.parent.name}"  # nodes/{agent}/inbox/{id}.json

    for mid in sorted(affected.get("message", ())):
        row = db_messages.get((mid,))
        old = sources["messages"].get((mid,))
        if row is None:  # read or gone in the database: no unread file
            if old:
                drop(old, mid, inbox_lock(old))
            continue
        msg = dict(zip(BY_NAME["messages"].columns, row))
        path = tree.message_file(msg["recipient"], mid)
        if old and Path(old) != path:
            drop(old, mid, inbox_lock(old))
        put(path, {f: msg.get(f) for f in MESSAGE_FIELDS}, mid, inbox_lock(str(path)))

    db = report.db_side

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
                drop(path_of(agent), agent, f"node-{agent}")
            else:
                put(path_of(agent), doc, agent, f"node-{agent}")

    poll_ids = sorted(affected.get("polls", ()))
    if poll_ids:
        with locked(tree, "polls") if not dry_run else contextlib.nullcontext():
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
            put(tree.polls_file, doc, ", ".join(poll_ids), "polls")

    for sid in sorted(affected.get("session", ())):
        session = document((sid,) in db["sessions"], lambda s: store.load_session(s), sid)
        if session is None:
            drop(tree.session_file(sid), sid, f"session-{sid}")
        else:
            put(tree.session_file(sid), session, sid, f"session-{sid}")
    return changes
