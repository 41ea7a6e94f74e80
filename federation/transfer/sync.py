"""Repair: make one side equal the other where the consistency report finds them apart.

``federation sync --to db`` re-imports file content over the database for the
keys that differ (upserting what the files have, removing what they lack);
``federation sync --to files`` rewrites the legacy documents from the
database, so that a rollback to phase 1 after drift is exact.  Both touch only
what the report lists, and with ``dry_run`` only say what they would change.

Safe under live dual-phase writes: the report is read without locks (the
fast path: it only finds candidates), then each legacy document that differs
is re-read from both sides and repaired while holding its file lock -- the
lock the shim holds across both sides of every phase-2/3 write of that
document (``polls``, the recipient's inbox, the agent's node, the session;
:func:`federation.domain.entities.document_lock`).  A document no longer different
under its lock (a write was in flight when the report was read) is left
alone, so a sync never removes or reverts what a writer was told succeeded.
Each lock's documents are repaired in one database transaction.

Unknown is never empty (CONTRACT "Unknown is never empty"): a legacy document that cannot be read
(torn after re-reads, invalid, a link or FIFO where it should be) is not a document without records.
``sync`` neither deletes nor overwrites, on either side, a record of a document that is unknown on the
side it reads from; it applies the rest and lists them (``SyncResult.unknown``; the CLI exits 3).
A sync scoped to entities (``--only``) ``--to files`` rebuilds the unknown documents of those entities
from the database (the one repair that writes them: the scope is the operator naming what to rebuild),
each under its lock, when it is still unreadable there and the database has it; an unscoped sync never
touches an unknown document.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from .._logging import library_logger

from ..stores import sqltext as _sql
from .. import config
from ..domain.authority import authority
from ..domain.clock import now
from ..stores.files import Tree, atomic_write_json, entry_kind, is_regular, locked, read_json, remove
from ..domain.layout import LIST_INBOX
from .keys import export_keys, import_keys, read_key_files
from .rows import BY_NAME, TABLES, TreeRows, Unknown, document_file, key_text, read_db_documents, read_files
from ..domain.entities import ENTITY_NAMES, MESSAGES, POLLS_LOCK, Entity, document_lock
from ..domain.layout import received_copy
from ..errors import AuthoritativeSideError, ConfigError, CorruptFileError, FileStorageError
from .migrate import insert_values
from .report import Doc, Report, Sides, compare_sides, database_exists, holding, lock_groups, only_documents, read_sides

__all__ = ["Change", "SyncResult", "sync", "TARGETS", "ENTITIES", "entity_scope"]

TARGETS = ("files", "db")

log = library_logger("federation.sync")

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
    #: documents the report listed that agreed once re-read under their lock (writes in flight when it was read)
    settled: int = 0
    #: the documents not synced because they could not be read (``{"path", "reason"}``): never taken as empty
    unknown: list[dict[str, str]] = dataclasses.field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"to": self.to, "dry_run": self.dry_run, "changes": [dataclasses.asdict(c) for c in self.changes],
                "unknown": self.unknown}


#: what ``sync --only`` takes: a table, or a document kind (a document's tables come with it: a poll's votes)
ENTITIES = ENTITY_NAMES


def entity_scope(only: Any) -> set[str] | None:
    """The tables a sync limited to the entities *only* touches (None: all).  A parent brings its children
    (``polls`` its ``votes``: they are one document); an unknown name is a :class:`ConfigError`."""
    if not only:
        return None
    tables: set[str] = set()
    for name in only:
        found = [t for t in TABLES if name in (t.name, t.document)]
        if not found:
            raise ConfigError(f"--only {name!r}: not an entity; one of {', '.join(ENTITIES)}")
        for t in found:
            tables.add(t.name)
            tables |= {c.name for c in TABLES if c.parent == t.name}
    return tables


def _scoped(report: Report, tables: set[str] | None) -> Report:
    """*report* with no difference outside *tables*."""
    if tables is None:
        return report
    entities = {n: (t if n in tables else type(t)(files=t.files, rows=t.rows)) for n, t in report.entities.items()}
    return Report(entities, report.invalid, report.unknown)


def _kinds(tables: set[str] | None) -> set[str] | None:
    return None if tables is None else {BY_NAME[n].document for n in tables}


def sync(to: str, *, root: Path | None = None, dry_run: bool = False, store: Any = None, force: bool = False,
         reason: str | None = None, settings: config.Settings,
         phase: int | None = None, only: Any = None) -> SyncResult:
    """Rewrite side *to* (``"files"`` or ``"db"``) to equal the other side.

    Each differing document is decided again and repaired under its file lock
    (see the module's docstring); the changes returned are those made.  A dry
    run lists what the report shows, takes no lock and writes nothing.

    *phase*: the fleet's current phase, which the caller asks the rollout
    (``federation sync`` passes ``rollout._default.fleet_phase(settings)``).  Refused
    (:class:`AuthoritativeSideError`) when *to* is the side authoritative in it
    (the files in 1-2, the database in 3-4): that would put the stale side's
    content over what agents were told succeeded.  *force* with a *reason*
    overrides; a dry run is never refused.  A write without a phase is refused
    (:class:`ConfigError`): the side to protect is unknown.
    *settings*: the federation repaired.
    *only*: entities (tables or document kinds, :data:`ENTITIES`) to limit the sync to.

    A document that could not be read on the file side is unknown, never empty: its records are left
    alone on both sides; only ``--to files`` scoped by *only* rebuilds it, from the database, when the
    database has it.  What stays
    unknown is listed in the result's ``unknown`` (``federation sync`` then exits 3).
    """
    if to not in TARGETS:
        raise ValueError(f"to must be one of {TARGETS}, not {to!r}")
    tables = entity_scope(only)
    root = Path(root) if root is not None else settings.root
    if not dry_run:
        check_direction(to, phase, force=force, reason=reason)
    if store is None and (not dry_run or database_exists(settings)):
        from ..stores.sqlstore import get_store

        store = get_store(settings)  # a dry run never creates the database: none is compared as empty
    tree = Tree(root)
    sides = read_sides(root, store=store, settings=settings)  # no lock: candidates only, decided again under the locks
    report = _scoped(compare_sides(sides), tables)
    unknown = sides.files.unknown.only(_kinds(tables))
    if dry_run:
        if to == "db":
            changes, left = _db_plan(sides, report)[0], unknown
        else:
            changes, left = _to_files(store, tree, sides, report, apply=False), unknown
            if tables is not None:
                restored, left = _restore(store, tree, unknown, sides.db, apply=False)
                changes += restored
        if store is not None and (tables is None or "messages" in tables):
            changes += _keys(store, tree, to, apply=False)
        return SyncResult(to, dry_run, changes, unknown=left.entries())
    result = SyncResult(to, dry_run, [])
    stamp = now()
    for locks, (docs, paths) in sorted(lock_groups(tree, sides, report).items()):
        with holding(tree, locks):
            files = only_documents(read_files(tree, paths), docs)
            unknown.merge(files.unknown.only(_kinds(tables)))  # torn since the first read: left alone as well
            if to == "db":
                changes, differing = store.db.write(lambda tx: _repair_db(tx, files, docs, stamp, tables),
                                                    snapshot=True)
            else:
                fresh = Sides(files, store.db.read(lambda tx: read_db_documents(tx, docs)))
                report = _scoped(compare_sides(fresh), tables)
                changes, differing = _to_files(store, tree, fresh, report, apply=True), _differing(report)
        result.changes += changes
        result.settled += len(docs - differing)
    if to == "files" and unknown and tables is not None:
        restored, unknown = _restore(store, tree, unknown, sides.db, apply=True)
        result.changes += restored
    if tables is None or "messages" in tables:  # idempotency keys go with every move, both ways (issue 29)
        result.changes += _keys(store, tree, to, apply=True)
    result.unknown = unknown.entries()
    if to == "db" and tables is None and not result.unknown:
        store.mark_caught_up()  # the database holds every record of the files
    log.info("sync_done", to=to, changes=len(result.changes), settled=result.settled, unknown=len(result.unknown))
    return result


def check_direction(to: str, phase: int | None, *, force: bool = False, reason: str | None = None) -> None:
    """Return when rewriting side *to* is safe in *phase* (or forced with a reason); else raise."""
    if force and not (reason and reason.strip()):
        raise ConfigError("--force needs --reason: say why the authoritative side is overwritten (it is recorded)")
    if phase is None:
        if force:
            return
        raise ConfigError("sync needs the fleet's phase to know which side it must not overwrite: pass "
                          "phase=federation.rollout.fleet_phase() (what `federation sync` does)")
    side = authority(phase)
    if to == side and not force:
        other = "files" if side == "db" else "db"
        name = "the database is" if side == "db" else "the files are"
        raise AuthoritativeSideError(
            f"refused: {name} authoritative in phase {phase} (files in 1-2, the database in 3-4): "
            f"`sync --to {to}` would put the other side's older content over what agents "
            f"wrote. The safe repair is `federation sync --to {other}`; `--force --reason TEXT` overrides "
            "(recorded in control/syncs.jsonl)")


# ---------------------------------------------------------------------------
# files -> database


def _db_plan(sides: Sides, report: Report) -> tuple[list[Change], list[tuple[Entity, list[tuple]]],
                                                     list[tuple[Entity, list[tuple]]]]:
    """(changes, deletes, upserts) that make the database of *sides* equal its files."""
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
    return changes, deletes, upserts


def _repair_db(tx: Any, files: TreeRows, docs: set[Doc], stamp: str,
               tables: set[str] | None = None) -> tuple[list[Change], set[Doc]]:
    """In transaction *tx*, under the documents' file locks: read the database rows of *docs*, compare them
    with their file rows *files* (read under the same locks) and write what still differs (in *tables*;
    never a record of a document the files could not read: :func:`compare_sides` leaves those out).
    (The changes, the documents that still differed.)"""
    sides = Sides(files, read_db_documents(tx, docs))
    report = _scoped(compare_sides(sides), tables)
    changes, deletes, upserts = _db_plan(sides, report)
    for table, keys in deletes:
        if table.db_filter:
            tx.executemany(_sql.mark_read(table), [(stamp, *k) for k in keys])
        else:
            tx.executemany(_sql.delete_by_key(table), keys)
    for table, rows in upserts:
        # a message that has a file is unread: the upsert also clears a read_at the database holds, or the
        # row would stay outside the compared (unread) side and be "repaired" again on every run
        tx.executemany(_sql.upsert(table, extra=True, reopen=bool(table.db_filter)),
                       insert_values(table, rows, files.rows))
    return changes, _differing(report)


def _differing(report: Report) -> set[Doc]:
    """The legacy documents holding a row that differs."""
    return {(BY_NAME[name].document, str(key[0])) for name, t in report.entities.items()
            for key in (*t.missing_in_db, *t.missing_in_files, *t.different)}


def _affected(report: Report) -> dict[str, set[str]]:
    """The legacy documents holding a differing row: {document kind: {document id}}."""
    out: dict[str, set[str]] = {}
    for kind, doc_id in _differing(report):
        out.setdefault(kind, set()).add(doc_id)
    return out


def _loader(kind: str) -> str:
    """The store's loader of one legacy document of *kind*, rebuilt whole from the database (messages are
    rows): ``load_{kind}`` (``load_session``, ``load_task``...), one poll of ``polls.json`` ``load_poll``."""
    return "load_poll" if kind == "polls" else f"load_{kind}"


#: the documents present in the database: those with a row in their kind's top table
_TOP = tuple(t for t in TABLES if t.parent is None)


def _to_files(store: Any, tree: Tree, sides: Sides, report: Report, apply: bool) -> list[Change]:
    """Rewrite (with *apply*; else only list) each legacy document holding a differing row from the database.

    When applying, the caller holds the documents' locks and *sides* was read under them.
    """
    changes: list[Change] = []
    affected = _affected(report)
    sources = sides.files.sources
    present = {(t.document, str(k[0])) for t in _TOP for k in sides.db[t.name]}

    def put(path: Path | str, doc: Any, key: str) -> None:
        changes.append(Change("write", str(path), key))
        if apply:
            atomic_write_json(Path(path), doc, root=tree.root)

    def drop(path: Path | str | None, key: str) -> None:
        if path is None or entry_kind(Path(path), root=tree.root) is None:  # through the gate: no link followed
            return
        changes.append(Change("delete", str(path), key))
        if apply:
            remove(Path(path), root=tree.root)

    def document(kind: str, doc_id: str) -> Any:
        """The database's document (True when only listing: nothing more is read), or None."""
        if (kind, doc_id) not in present:
            return None
        return getattr(store, _loader(kind))(doc_id) if apply else True

    lists: dict[Path, dict[str, Any]] = {}  # list-file inboxes (federation.adopt): edited in place, never dropped
    for mid in sorted(affected.get("message", ())):
        row = sides.db["messages"].get((mid,))
        old = sources["messages"].get((mid,))
        if old and os.path.basename(old) == LIST_INBOX:
            lists.setdefault(Path(old), {})[mid] = None if row is None else MESSAGES.from_row(row)
            continue
        if row is None:  # read or gone in the database: no unread file
            drop(old, mid)
            continue
        msg = MESSAGES.from_row(row)
        listed = tree.node(msg["recipient"]) / LIST_INBOX
        if old is None and is_regular(listed, root=tree.root):
            lists.setdefault(listed, {})[mid] = msg  # its inbox is a list file: the message goes there
            continue
        path = tree.message_file(msg["recipient"], mid)
        if old and received_copy(old, path):
            # received and not acknowledged: it stays out of inbox/ (rewritten without its lease, it is
            # taken back by the next receive: delivered again, never lost)
            path = Path(old)
        if old and Path(old) != path:
            drop(old, mid)
        put(path, msg, mid)
    for path, edits in sorted(lists.items()):
        try:
            doc = read_json(path, list, [], root=tree.root)
        except CorruptFileError:  # unreadable since it was read: unknown, never rebuilt from [] (the others)
            continue
        ids = {m.get("id"): i for i, m in enumerate(doc) if isinstance(m, dict)}
        for mid, msg in edits.items():
            if msg is None:  # read or gone in the database: read in the list too (the list keeps its history)
                if mid in ids:
                    doc[ids[mid]] = {**doc[ids[mid]], "read": True}
            elif mid in ids:
                doc[ids[mid]] = msg
            else:
                doc.append(msg)
        put(path, doc, ", ".join(sorted(edits)))

    poll_ids = sorted(affected.get("polls", ()))
    if poll_ids:  # one document holds every poll: the others are kept as they are
        try:
            doc = read_json(tree.polls_file, dict, {}, root=tree.root)
        except CorruptFileError:  # unreadable since it was read: unknown, never rebuilt from {} (the others)
            doc, poll_ids = None, []
        for pid in poll_ids:
            poll = document("polls", pid)
            if poll is None:
                doc.pop(pid, None)
            else:
                doc[pid] = poll
        if poll_ids:
            put(tree.polls_file, doc, ", ".join(poll_ids))

    for kind in sorted(set(affected) - {"message", "polls"}):  # one file per document: a node's, a session, a task
        for doc_id in sorted(affected[kind]):
            path = document_file(tree, kind, doc_id, doc_id)
            doc = document(kind, doc_id)
            if doc is None:
                drop(path, doc_id)
            else:
                put(path, doc, doc_id)
    return changes


def _restore(store: Any, tree: Tree, unknown: Unknown, db: dict[str, dict[tuple, tuple]],
             apply: bool) -> tuple[list[Change], Unknown]:
    """Rebuild from the database each legacy document of *unknown* that the database has (``sync --to files``):
    the whole ``polls.json``, one poll in it, a node document, a session, an unread message in its inbox.
    Each is re-read under its document's lock first: one readable again is left to the next comparison.
    A folder that is a link (``nodes/``, an agent's, an inbox) is never written through: it stays unknown.
    (The changes, what is still unknown.)"""
    changes: list[Change] = []
    left = Unknown()
    whole_polls = [e for e in unknown.listed if e[2] == "polls" and e[3] is None and e[4] is None
                   and e[0] == str(tree.polls_file)]
    poll_entries = [e for e in unknown.listed if e[2] == "polls" and e[4] is not None]
    done: set[tuple] = set()

    def write(path: Path, doc: Any, key: str, lock: str, still: Any) -> bool:
        """Write *doc* at *path* under *lock* when *still* (a check on a fresh read) says it is unknown."""
        if not apply:
            changes.append(Change("write", str(path), key))
            return True
        with locked(tree, lock):
            if not still(read_files(tree, [path]).unknown):
                return True  # readable again: the next report compares it
            try:
                atomic_write_json(path, doc() if callable(doc) else doc, root=tree.root)
            except (FileStorageError, CorruptFileError) as exc:
                log.warning("sync_restore_failed", path=str(path), error=str(exc))
                return False
        changes.append(Change("write", str(path), key))
        return True

    poll_ids = sorted(str(k[0]) for k in db["polls"])
    if whole_polls:
        ok = write(tree.polls_file, lambda: {pid: store.load_poll(pid) for pid in poll_ids}, ", ".join(poll_ids),
                   POLLS_LOCK, lambda u: "polls" in u.kinds)
        done |= set(whole_polls) if ok else set()
    elif poll_entries:
        wanted = sorted({e[4] for e in poll_entries if (e[4],) in db["polls"]})

        def merged() -> dict:
            doc = read_json(tree.polls_file, dict, {}, root=tree.root)
            doc.update({pid: store.load_poll(pid) for pid in wanted})
            return doc

        if wanted and write(tree.polls_file, merged, ", ".join(wanted), POLLS_LOCK,
                            lambda u: any(("polls", pid) in u.docs for pid in wanted)):
            done |= {e for e in poll_entries if e[4] in wanted}
    for entry in unknown.listed:
        path, _, kind, owner, doc_id = entry
        if entry in done or kind == "polls" or doc_id is None:
            continue
        if kind == "message":
            row = db["messages"].get((doc_id,))
            if row is None:
                continue
            msg = MESSAGES.from_row(row)
            if path != str(tree.message_file(msg["recipient"], doc_id)):
                continue  # a leased or dead copy, or another agent's folder: not rebuilt in place
            if write(Path(path), msg, doc_id, document_lock("message", msg["recipient"]),
                     lambda u, d=doc_id: ("message", d) in u.docs):
                done.add(entry)
            continue
        top = next(t for t in _TOP if t.document == kind)
        if not any(str(k[0]) == doc_id for k in db[top.name]):
            continue
        if path != str(document_file(tree, kind, doc_id, doc_id)):
            continue
        if write(Path(path), lambda k=kind, d=doc_id: getattr(store, _loader(k))(d), doc_id,
                 document_lock(kind, doc_id), lambda u, k=kind, d=doc_id: (k, d) in u.docs):
            done.add(entry)
    for entry in unknown.listed:
        if entry not in done:
            left.add(entry[0], entry[1], entry[2], owner=entry[3], doc_id=entry[4])
    return changes, left


def _keys(store: Any, tree: Tree, to: str, apply: bool) -> list[Change]:
    """Carry the idempotency keys one side has and the other lacks (:mod:`.keys`): added, never removed."""
    if to == "db":
        found = read_key_files(tree)
        if not apply:
            return []  # a dry run lists rows; keys are bookkeeping, carried by the real run
        carried = import_keys(store, found)
        return [Change("key", "idempotency_keys", f"{carried} key(s) carried")] if carried else []
    return [Change("write", path, f"key {key}") for path, key in export_keys(store, tree, apply=apply)]


def repair_documents(tx: Any, files: TreeRows, docs: set[Doc], stamp: str) -> list[Change]:
    """In transaction *tx*: make the database rows of the legacy documents *docs* equal their rows *files*
    (read by the caller under the documents' locks).  What ``sync --to db`` does for one document, and what
    :mod:`federation.adopt` does after an adopted function wrote one."""
    return _repair_db(tx, files, docs, stamp)[0]
