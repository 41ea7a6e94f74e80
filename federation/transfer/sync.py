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
from ..stores.files import Tree, atomic_write_json, entry_kind, read_json, remove
from .rows import BY_NAME, TABLES, TreeRows, document_file, key_text, read_db_documents, read_files
from ..domain.entities import MESSAGES, Entity
from ..domain.layout import received_copy
from ..errors import AuthoritativeSideError, ConfigError, CorruptFileError
from .migrate import insert_values
from .report import Doc, Report, Sides, compare_sides, database_exists, holding, lock_groups, only_documents, read_sides

__all__ = ["Change", "SyncResult", "sync", "TARGETS"]

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

    def to_json(self) -> dict[str, Any]:
        return {"to": self.to, "dry_run": self.dry_run, "changes": [dataclasses.asdict(c) for c in self.changes]}


def sync(to: str, *, root: Path | None = None, dry_run: bool = False, store: Any = None, force: bool = False,
         reason: str | None = None, settings: config.Settings | None = None,
         phase: int | None = None) -> SyncResult:
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
    *settings*: the federation repaired (default: the configured one).
    """
    if to not in TARGETS:
        raise ValueError(f"to must be one of {TARGETS}, not {to!r}")
    settings = settings or config.settings()
    root = Path(root) if root is not None else settings.root
    if not dry_run:
        check_direction(to, phase, force=force, reason=reason)
    if store is None and (not dry_run or database_exists(settings)):
        from ..stores.sqlstore import get_store

        store = get_store(settings)  # a dry run never creates the database: none is compared as empty
    tree = Tree(root)
    sides = read_sides(root, store=store, settings=settings)  # no lock: candidates only, decided again under the locks
    report = compare_sides(sides)
    if dry_run:
        changes = _db_plan(sides, report)[0] if to == "db" else _to_files(store, tree, sides, report, apply=False)
        return SyncResult(to, dry_run, changes)
    result = SyncResult(to, dry_run, [])
    stamp = now()
    for locks, (docs, paths) in sorted(lock_groups(tree, sides, report).items()):
        with holding(tree, locks):
            files = only_documents(read_files(tree, paths), docs)
            if to == "db":
                changes, differing = store.db.write(lambda tx: _repair_db(tx, files, docs, stamp), snapshot=True)
            else:
                fresh = Sides(files, store.db.read(lambda tx: read_db_documents(tx, docs)))
                report = compare_sides(fresh)
                changes, differing = _to_files(store, tree, fresh, report, apply=True), _differing(report)
        result.changes += changes
        result.settled += len(docs - differing)
    log.info("sync_done", to=to, changes=len(result.changes), settled=result.settled)
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


def _repair_db(tx: Any, files: TreeRows, docs: set[Doc], stamp: str) -> tuple[list[Change], set[Doc]]:
    """In transaction *tx*, under the documents' file locks: read the database rows of *docs*, compare them
    with their file rows *files* (read under the same locks) and write what still differs.
    (The changes, the documents that still differed.)"""
    sides = Sides(files, read_db_documents(tx, docs))
    report = compare_sides(sides)
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


#: the store's loader of each kind of legacy document rebuilt whole from the database (messages are rows)
_LOADERS = {"context": "load_context", "expertise": "load_expertise", "profile": "load_profile",
            "polls": "load_poll", "session": "load_session"}
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
        return getattr(store, _LOADERS[kind])(doc_id) if apply else True

    for mid in sorted(affected.get("message", ())):
        row = sides.db["messages"].get((mid,))
        old = sources["messages"].get((mid,))
        if row is None:  # read or gone in the database: no unread file
            drop(old, mid)
            continue
        msg = MESSAGES.from_row(row)
        path = tree.message_file(msg["recipient"], mid)
        if old and received_copy(old, path):
            # received and not acknowledged: it stays out of inbox/ (rewritten without its lease, it is
            # taken back by the next receive: delivered again, never lost)
            path = Path(old)
        if old and Path(old) != path:
            drop(old, mid)
        put(path, msg, mid)

    poll_ids = sorted(affected.get("polls", ()))
    if poll_ids:  # one document holds every poll: the others are kept as they are
        try:
            doc = read_json(tree.polls_file, dict, {}, root=tree.root)
        except CorruptFileError:
            doc = {}  # unreadable: rebuilt from the database, poll by poll
        for pid in poll_ids:
            poll = document("polls", pid)
            if poll is None:
                doc.pop(pid, None)
            else:
                doc[pid] = poll
        put(tree.polls_file, doc, ", ".join(poll_ids))

    for kind in ("context", "expertise", "profile", "session"):
        for doc_id in sorted(affected.get(kind, ())):
            path = document_file(tree, kind, doc_id, doc_id)
            doc = document(kind, doc_id)
            if doc is None:
                drop(path, doc_id)
            else:
                put(path, doc, doc_id)
    return changes


def repair_documents(tx: Any, files: TreeRows, docs: set[Doc], stamp: str) -> list[Change]:
    """In transaction *tx*: make the database rows of the legacy documents *docs* equal their rows *files*
    (read by the caller under the documents' locks).  What ``sync --to db`` does for one document, and what
    :mod:`federation.adopt` does after an adopted function wrote one."""
    return _repair_db(tx, files, docs, stamp)[0]
