"""The migration: every legacy file into the database, validated.

``federation migrate`` = ``python scripts/migrate_to_sqlite.py``.  The tree is
read into rows (:func:`federation.transfer.rows.read_tree`), the rows are inserted
in batches with ``INSERT … ON CONFLICT DO NOTHING`` (so a rerun, or a rerun
after the process was killed, completes the import without changing what is
there, and rows a live phase-2 dual-write already wrote are never overwritten
by older file content), then every file row is looked up in the database and
the counts are compared.  Only then is the database marked backfilled, which
phases 3 and 4 require.
"""

from __future__ import annotations

import dataclasses
import operator
import os
from pathlib import Path
from typing import Any, ContextManager

from ..stores import sqltext as _sql
from .. import config
from ..domain.clock import now
from .keys import import_keys, read_key_files
from .rows import TABLES, TreeRows, key_text, read_tree
from ..stores import files as _files
from ..stores.files import read_json
from ..domain.delivery import delivery_problem, journal_entry
from ..domain.entities import EXPERTISE, MESSAGES, Entity
from ..domain.layout import DEAD_DIR, LEASED_DIR, Tree, leases_journal, message_folder
from ..errors import CorruptFileError, FederationError

__all__ = ["MigrationResult", "migrate", "import_rows", "complete", "EXIT_OK", "EXIT_FAILED", "EXIT_INVALID"]

EXIT_OK, EXIT_FAILED, EXIT_INVALID = 0, 1, 3

#: Rows per write transaction: large enough for bulk speed, small enough that
#: a killed run leaves committed batches a rerun skips over.
BATCH_SIZE = 5000


@dataclasses.dataclass
class MigrationResult:
    dry_run: bool
    entities: dict[str, dict[str, int]]
    invalid: list[dict[str, str]]
    dropped_fields: list[dict[str, str]]
    #: file rows not found in the database after the import, per table (a failure)
    missing: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    files: int = 0
    #: JSON documents under the legacy folders the layout has no place for: {"path", "records", "bytes"}
    not_imported: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    #: files an operator accepted (``--accept``), content unchanged: no longer in invalid / not_imported
    #: (filled by :func:`federation.operations.accepted.settle`)
    accepted: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    @property
    def exit_code(self) -> int:
        if self.missing:
            return EXIT_FAILED
        return EXIT_INVALID if self.invalid or self.not_imported else EXIT_OK

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"dry_run": self.dry_run, "entities": self.entities, "invalid": self.invalid,
                                "not_imported": self.not_imported, "accepted": self.accepted,
                                "dropped_fields": self.dropped_fields}
        if self.missing:
            data["missing_in_db"] = self.missing
        return data


def insert_values(table: Entity, rows: list[tuple], all_rows: dict[str, dict[tuple, tuple]]) -> list[tuple]:
    """Rows with the table's insert-only columns appended."""
    if not table.extra:
        return rows
    if len(table.extra) == 1:  # every table's case: a third of the cost of the general form
        fn = table.extra[0][1]
        return [r + (fn(r, all_rows),) for r in rows]
    return [r + tuple(fn(r, all_rows) for _, fn in table.extra) for r in rows]


def _bulk_load(store: Any) -> ContextManager[None]:
    """Whatever makes the engine's bulk import cheaper (SQLite: no WAL checkpoint until the end)."""
    return store.db.dialect.bulk_load(store.db)


def import_rows(store: Any, scanned: TreeRows, batch_size: int = BATCH_SIZE, progress: bool = False) -> None:
    """Insert every scanned row that the database does not hold yet, in batches, parents first."""
    total = sum(len(r) for r in scanned.rows.values())
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, unit="row", desc="importing", leave=False, mininterval=0.25)
    for table in TABLES:
        # in key order: B-tree inserts that append instead of splitting pages at random places
        # (measured on SQLite: 100,000 messages with uuid ids, 1.0 s sorted against 3.7 s as found)
        rows = sorted(scanned.rows[table.name].values(), key=operator.itemgetter(*range(table.key)))
        if not rows:
            continue
        sql = _sql.insert(table, "DO NOTHING", extra=True)
        if table.replace_set:
            # one transaction for the whole table: an owner is either already there (kept) or imported whole
            def fn(tx, rows=rows, sql=sql, table=table) -> None:
                owner = table.key_columns[0]
                present = {r[0] for r in tx.fetchall(_sql.select(table, what=f"DISTINCT {owner}"))}
                fresh = [r for r in rows if r[0] not in present]
                if fresh:
                    tx.executemany(sql, insert_values(table, fresh, scanned.rows))

            store.db.write(fn)
            if bar is not None:
                bar.update(len(rows))
            continue
        for start in range(0, len(rows), batch_size):
            chunk = insert_values(table, rows[start:start + batch_size], scanned.rows)
            store.db.write(lambda tx, chunk=chunk, sql=sql: tx.executemany(sql, chunk))
            if bar is not None:
                bar.update(len(chunk))
    if bar is not None:
        bar.close()


def _vanished(scanned: TreeRows, table: str, root: Path) -> list[tuple]:
    """Keys of scanned rows whose file is gone now: removed by live traffic while the migration ran."""
    by_dir: dict[str, list[tuple[tuple, str]]] = {}
    for key, path in scanned.sources[table].items():
        directory, _, name = path.rpartition(os.sep)
        by_dir.setdefault(directory, []).append((key, name))
    gone = []
    for directory, entries in by_dir.items():
        try:
            # one listing per folder, not a stat per file; through the gate (a folder now a link: nothing in it)
            present = set(_files.list_dir(Path(directory), root=root))
        except (FileNotFoundError, NotADirectoryError, CorruptFileError):
            present = set()
        gone += [key for key, name in entries if name not in present]
    return gone


def _settle_live_removals(store: Any, scanned: TreeRows) -> None:
    """Undo what the import resurrected: files a phase-2 write removed after they were read.

    A legacy claim deletes a message file; if the database had no row to
    claim yet, the import inserted it unread: mark it read, as the claim
    would have.  Clearing an agent's expertise deletes its file and rows; the
    import put the old rows back: delete them.
    """
    messages = _vanished(scanned, "messages", store.tree.root)
    owners = sorted({key[:1] for key in _vanished(scanned, "expertise", store.tree.root)})
    if not (messages or owners):
        return
    stamp = now()

    def fn(tx) -> None:
        if messages:
            tx.executemany(_sql.mark_read(MESSAGES),
                           [(stamp, *k) for k in messages])
        if owners:
            tx.executemany(_sql.delete_owner(EXPERTISE), owners)

    store.db.write(fn)
    expertise = scanned.rows["expertise"]
    for key in [k for k in expertise if k[:1] in set(owners)]:
        del expertise[key]  # no longer in the tree: not expected in the database either


def _carry_leases(store: Any, scanned: TreeRows) -> None:
    """Messages found in leased/ or dead/ (docs/delivery.md) keep their delivery state in the database:
    attempt, lease_until, dead_at from the file, on rows not delivered there yet (a rerun changes nothing)."""
    updates, invalid = _lease_states(scanned, now())
    scanned.invalid.extend(invalid)
    if updates:
        # lease_until "" (a lease the file lost): already over, so the next receive takes it back
        store.db.write(lambda tx: tx.executemany(
            "UPDATE messages SET attempt = ?, lease_until = ?, dead_at = ? WHERE id = ? AND read_at IS NULL "
            "AND attempt = 0", updates))


def _lease_states(scanned: TreeRows, stamp: str) -> tuple[list[tuple], list[dict[str, str]]]:
    """The delivery state of each scanned leased or dead message, ``(attempt, lease_until, dead_at, id)``, and
    the files whose delivery fields are out of range (domain.delivery), listed as invalid: a lease journal
    entry out of range counts as a lost lease (delivered again, never lost); a dead/ file stays dead."""
    updates, invalid = [], []
    journals: dict[Path, dict] = {}  # the lease journal of each leased/ folder: {id: [attempt, lease_until]}
    for key, path in scanned.sources["messages"].items():
        folder = message_folder(path)
        if folder not in (LEASED_DIR, DEAD_DIR):
            continue
        try:
            if folder == LEASED_DIR:
                journal = leases_journal(path)
                if journal not in journals:
                    journals[journal] = read_json(journal, dict, {}, root=Path(scanned.root))
                data, problem = {}, None
                if key[0] in journals[journal]:
                    lease, problem = journal_entry(journals[journal][key[0]], stamp)
                    if lease is not None:
                        data = {"attempt": lease[0], "lease_until": lease[1]}
                    else:
                        invalid.append({"path": str(journal), "reason": f"the lease of {key[0]!r}: {problem}"})
            else:
                data = read_json(Path(path), root=Path(scanned.root))
        except FederationError:
            continue  # gone or unreadable since the scan: the row stays deliverable (at least once)
        if not isinstance(data, dict):
            continue
        if folder == DEAD_DIR:
            problem = delivery_problem(data)  # changed since the scan: listed, and the message stays dead
            if problem:
                invalid.append({"path": str(path), "reason": problem})
                data = {}
        attempt = data.get("attempt")
        attempt = attempt if isinstance(attempt, int) and not isinstance(attempt, bool) and attempt > 0 else 1
        until = data.get("lease_until") if isinstance(data.get("lease_until"), str) else ""
        dead = data.get("dead_at") if isinstance(data.get("dead_at"), str) else None
        if folder == DEAD_DIR and dead is None:
            dead = until or stamp
        updates.append((attempt, until, dead, key[0]))
    return updates, invalid


def _carry_keys(store: Any, scanned: TreeRows) -> None:
    """The idempotency keys of ``nodes/{sender}/sent_keys/`` into the database (:mod:`.keys`), so a send retried
    with its key after the switch to the database still finds it, its messages read before or not.  Key files
    that cannot stand for their sender's send are listed as invalid and not carried."""
    found = read_key_files(store.tree, scanned)
    import_keys(store, found)
    scanned.invalid.extend(found.invalid)


def _verify_counts(store: Any, scanned: TreeRows) -> tuple[dict[str, dict[str, int]], dict[str, list[str]]]:
    """Row counts per table, and the file rows the database lacks."""

    def fn(tx) -> tuple[dict[str, dict[str, int]], dict[str, list[str]]]:
        entities, missing = {}, {}
        for table in TABLES:
            file_rows = scanned.rows[table.name]
            count = tx.fetchone(_sql.select_file_side(table, "COUNT(*)"))
            entities[table.name] = {"files": len(file_rows), "rows": int(count[0])}
            if table.replace_set:  # an owner's set may have been replaced live: the owner must be there
                owner = table.key_columns[0]
                have = {(r[0],) for r in tx.fetchall(_sql.select(table, what=f"DISTINCT {owner}"))}
                lacking = sorted({k[:1] for k in file_rows} - have)
            else:
                # every row, read messages included: a message claimed live since the scan is still there
                have = set(map(tuple, tx.fetchall(_sql.select(table, what=", ".join(table.key_columns)))))
                lacking = sorted(k for k in file_rows if k not in have)
            if lacking:
                missing[table.name] = [key_text(k) for k in lacking]
        return entities, missing

    return store.db.read(fn)


def migrate(root: Path | None = None, *, dry_run: bool = False, progress: bool = False,
            batch_size: int = BATCH_SIZE, store: Any = None,
            settings: config.Settings) -> MigrationResult:
    """Migrate the legacy tree under *root* (default: the root of *settings*) into the database.

    With *dry_run* the files are read and counted and nothing at all is
    written: the database is not even opened.  *settings*: the federation
    migrated.
    """
    root = Path(root) if root is not None else settings.root
    if dry_run:
        scanned = read_tree(root, progress=progress)
        # what the import would refuse to carry: delivery fields out of range, key files not their sender's
        scanned.invalid.extend(_lease_states(scanned, now())[1] + read_key_files(Tree(root), scanned).invalid)
        # nothing is written: "rows" are the rows the import would offer
        entities = {name: {"files": n, "rows": n} for name, n in scanned.counts().items()}
        return _left_out(root, MigrationResult(True, entities, scanned.invalid, scanned.dropped_fields,
                                               files=scanned.files))
    if store is None:
        from ..stores.sqlstore import get_store

        store = get_store(settings)
    # Read everything, then insert: measured, a second thread inserting while the first reads is
    # slower in CPython (the two contend for the GIL) than the two passes one after the other.
    scanned = read_tree(root, progress=progress)
    with _bulk_load(store):
        import_rows(store, scanned, batch_size=batch_size, progress=progress)
    return _left_out(root, complete(store, scanned))


def _left_out(root: Path, result: MigrationResult) -> MigrationResult:
    """*result* with the JSON documents the layout has no place for listed as not imported (out of
    ``dropped_fields``).  The operators' decisions (``migrate --accept``) are applied on top by
    :func:`federation.operations.accepted.settle`, as ``federation migrate`` does."""
    from .leftovers import not_imported

    result.not_imported, result.dropped_fields = not_imported(result.dropped_fields, root)
    return result


def complete(store: Any, scanned: TreeRows) -> MigrationResult:
    """After the import: settle files removed live meanwhile, validate the counts, mark the database backfilled."""
    _settle_live_removals(store, scanned)
    _carry_leases(store, scanned)
    _carry_keys(store, scanned)
    entities, missing = _verify_counts(store, scanned)
    if not missing and store.meta("backfilled_at") is None:
        # phases 3-4 may now serve this database; a rerun keeps the first date
        store.mark_backfilled("migration")
    if not missing and not scanned.invalid:
        store.mark_caught_up()  # every record of the files is in the database (the runbook's catch-up)
    return MigrationResult(False, entities, scanned.invalid, scanned.dropped_fields, missing, files=scanned.files)
