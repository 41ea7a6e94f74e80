"""``federation prune``: the retention policy of DESIGN.md (30 days by default).

Removes, from the database, messages that were **read** before the cutoff and
message-history entries older than it.  An unread message is never removed,
nor is a poll (open or closed), a vote or a session.  An entity whose description
has a retention (:class:`federation.domain.entities.Retention`: the tasks, done
before the cutoff) is pruned on both sides: its rows, and its legacy files (one per
record in a folder of ``shared/``), each removed under its document's lock.

Only the database holds what is pruned: a read message has no file (the
legacy path deletes a message file when it is claimed) and the history has
no file side, so the files need no change in any phase and the consistency
report, which compares only unread messages, agrees afterwards.

The work is done in bounded batches, each its own short write transaction:
the batch walks the table's primary key (an index, so each batch costs what
it touches, not a scan of the table) and deletes the matching rows of that
key range.  Agents' writes interleave between batches.

A batch is sized by the time it holds the writer, not by a row count: SQLite
has one writer, and an agent's write waits behind the whole batch.  Each
batch aims at ``hold`` seconds (5 ms by default; ``batch_size`` keys at
most), the next one is resized from what this one took, and a pause of twice
the batch (at least 5 ms) lets the agents' queued writes run first.  The
time held is the whole write, commit included; after each batch the log it
wrote is folded into the database (SQLite: a passive WAL checkpoint, outside
the write gate) -- left alone, the agent's commit that crossed the log's size
limit did it, holding every other writer back (issue 27: agents' p99 5.7x).
bench/bench_prune.py measures agents' p99 during a prune against their p99
without it, in the same run.

It also keeps ``$FEDERATION_ROOT/control/`` within its retention (issue 30),
whatever *older_than* says (the database's age does not apply to the control
plane's counts): counts of hours that ended more than 35 days ago and the
mismatch files of processes not heard of for 35 days are removed, and the
processes' hourly counts files are merged as they age (one file per hour for
the fleet after an hour, one per day after 48 hours; see
``federation.rollout.maintain_counts``).  Every running process does the same
in small passes; ``prune`` does all that is due at once.
"""

from __future__ import annotations

import dataclasses
import time
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

from .. import config
from ..domain.moments import parse_duration
from .._logging import library_logger
from ..stores.database import database_exists
from ..domain.entities import ALL, Entity, document_lock
from ..domain.layout import FOLDER_OF, is_document_name, stem
from ..stores.files import Tree, list_dir, locked, read_json, remove
from ..errors import CorruptFileError, ValidationError

__all__ = ["PruneResult", "prune", "parse_duration", "DEFAULT_OLDER_THAN", "PRUNED_TABLES"]

log = library_logger("federation.prune")

DEFAULT_OLDER_THAN = "30d"

#: table -> the condition a row must meet to be removed (``?`` is the cutoff).
PRUNED_TABLES: dict[str, str] = {
    # read_at is written by our clock (ISO 8601 UTC, sorts as text); an unread row has none
    "messages": "read_at IS NOT NULL AND read_at < ?",
    "message_history": "timestamp < ?",
    # and every entity with a retention in its description (done tasks)
    **{e.table: e.retention.sql() for e in ALL if e.retention is not None},
}
#: the entities whose legacy files are pruned too (one file per record in a folder of shared/)
PRUNED_FILES: tuple[Entity, ...] = tuple(e for e in ALL if e.retention is not None and e.document in FOLDER_OF)

@dataclasses.dataclass
class PruneResult:
    dry_run: bool
    cutoff: str
    removed: dict[str, int]
    seconds: float = 0.0
    batches: int = 0
    #: control/'s retention: files merged and removed (:func:`prune_control`)
    control: dict[str, int] = dataclasses.field(default_factory=dict)
    #: legacy files removed per table (:data:`PRUNED_FILES`: done tasks)
    files: dict[str, int] = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"dry_run": self.dry_run, "removed": dict(self.removed), "cutoff": self.cutoff,
                "seconds": round(self.seconds, 3), "batches": self.batches, "control": dict(self.control),
                "files": dict(self.files)}


def prune_files(root: Any, cutoff: str, *, dry_run: bool = False) -> dict[str, int]:
    """Remove the legacy files of the records past their retention (:data:`PRUNED_FILES`), each re-read under
    its document's lock first (a file that cannot be read is left alone); ``{table: files}``."""
    tree = Tree(root)
    out = {}
    for entity in PRUNED_FILES:
        folder = tree.folder(entity.document)
        try:
            names = [n for n in list_dir(folder, root=tree.root) if is_document_name(n)]
        except CorruptFileError:  # the folder is a link or a file: nothing is read or removed through it
            names = []
        removed = 0
        for name in sorted(names):
            with locked(tree, document_lock(entity.document, stem(name))):
                try:
                    data = read_json(folder / name, root=tree.root)
                except CorruptFileError:
                    continue
                if data is None or not entity.retention.due(data, cutoff):
                    continue
                removed += 1 if dry_run else int(remove(folder / name, root=tree.root))
        out[entity.table] = removed
    return out


def prune_control(root: Any, *, dry_run: bool = False) -> dict[str, int]:
    """control/ within its retention now: every merge and removal due, in one pass without a budget
    (``dry_run``: counted only).  Waits for a running process's pass (each is bounded) to end first.

    ``{"merged", "hours_merged", "removed_merged", "removed_expired", "removed_mismatches"}``.
    """
    from ..rollout import maintain_counts

    total = maintain_counts(root, dry_run=dry_run, wait=True)
    out = total.to_json()
    out.pop("more", None)
    out.pop("busy", None)
    return out


def _key_walk(db: Any, table: str, after: str | int | None, batch: int, ceiling: str | int) -> Any:
    """The last primary key of the next *batch* keys after *after*, up to *ceiling* (None when none is left).

    *ceiling* is the table's last key when the prune started: rows written since are newer than any
    cutoff, and agents that keep writing would otherwise keep the walk chasing the table's end (a prune
    beside 4 busy agents walked 28 million keys, 8 at a time, for 7 minutes)."""
    where = " WHERE id <= ?" if after is None else " WHERE id > ? AND id <= ?"
    params = (ceiling,) if after is None else (after, ceiling)
    row = db.fetchone(f"SELECT MAX(id) FROM (SELECT id FROM {table}{where} ORDER BY id LIMIT ?) AS page",
                      params + (batch,))
    return None if row is None else row[0]


#: what one batch aims to hold the writer for, in seconds
DEFAULT_HOLD = 0.005
#: the pause after a batch, as a multiple of the time it held the writer (agents get two thirds of it)
PAUSE_RATIO = 2.0
#: the shortest pause between two batches, in seconds
MIN_PAUSE = 0.005
#: the longest pause between two batches, in seconds: a loaded machine slows every batch,
#: and a pause that grows with it made one prune of 30,000 rows take minutes
MAX_PAUSE = 0.1
#: the first batch's keys (then resized by its time)
_FIRST_BATCH = 200
_SMALLEST_BATCH = 20


def next_batch(size: int, held: float, hold: float, largest: int) -> int:
    """The next batch's keys: *size* scaled toward *hold* seconds from the *held* this one took,
    at most doubling at once (a fast batch may have been luck), within [20, *largest*]."""
    if held <= 0:
        scaled = size * 2
    else:
        scaled = min(size * 2, int(size * hold / held))
    return max(min(_SMALLEST_BATCH, largest), min(largest, scaled))


def prune(older_than: timedelta | str = DEFAULT_OLDER_THAN, *, dry_run: bool = False, batch_size: int = 2000,
          pause: float | None = None, hold: float = DEFAULT_HOLD, now: datetime | None = None, store: Any = None,
          progress: Callable[[str, int], None] | None = None,
          settings: config.Settings) -> PruneResult:
    """Remove read messages and history entries older than *older_than* from the database.

    Each write transaction aims to hold the writer *hold* seconds, examining
    at most *batch_size* keys; between batches it sleeps *pause* seconds (None:
    twice as long as the batch held the writer, between 5 and 100 ms).  Where one
    write holds only the rows it touches (PostgreSQL), agents do not wait behind a
    batch: every batch examines *batch_size* keys and pauses 5 ms.  *dry_run* counts and
    removes nothing.  A SQLite database that does not exist yet is not created
    (nothing to prune).  *settings*: the federation pruned.
    """
    delta = parse_duration(older_than) if isinstance(older_than, str) else older_than
    if delta <= timedelta(0):
        raise ValidationError("the duration must be greater than zero")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValidationError(f"batch_size must be a whole number of at least 1, got {batch_size!r}")
    cutoff = ((now or datetime.now(timezone.utc)) - delta).astimezone(timezone.utc).isoformat(timespec="microseconds")
    started = time.perf_counter()
    result = PruneResult(dry_run=dry_run, cutoff=cutoff, removed={t: 0 for t in PRUNED_TABLES})
    s = settings
    result.control = prune_control(s.root, dry_run=dry_run)
    result.files = prune_files(s.root, cutoff, dry_run=dry_run)
    if store is None:
        if not database_exists(s):
            result.seconds = time.perf_counter() - started
            return result
        from ..stores.sqlstore import get_store

        store = get_store(s)
    db = store.db
    paced = getattr(db.dialect, "one_writer", True)  # agents wait behind a batch: keep each one short
    for table, condition in PRUNED_TABLES.items():
        if dry_run:
            row = db.fetchone(f"SELECT COUNT(*) FROM {table} WHERE {condition}", (cutoff,))
            result.removed[table] = int(row[0])
            continue
        after = None
        size = min(_FIRST_BATCH, batch_size) if paced else batch_size
        ceiling = db.fetchone(f"SELECT MAX(id) FROM {table}")[0]  # what existed when the prune began
        while ceiling is not None:
            upto = _key_walk(db, table, after, size, ceiling)  # a read: the writer is not held meanwhile
            if upto is None:
                break
            low = "" if after is None else "id > ? AND "
            params = ((after,) if after is not None else ()) + (upto, cutoff)
            sql = f"DELETE FROM {table} WHERE {low}id <= ? AND {condition}"
            t0 = time.perf_counter()
            removed = db.write(lambda tx, sql=sql, params=params: tx.execute(sql, params).rowcount)
            held = time.perf_counter() - t0  # the writer is held until the commit is done, not the DELETE
            if paced:
                db.checkpoint()  # the log this batch wrote, folded in now: not by an agent's commit behind the gate
            result.removed[table] += max(int(removed or 0), 0)
            result.batches += 1
            if progress is not None:
                progress(table, result.removed[table])
            after = upto
            if paced:
                size = next_batch(size, held, hold, batch_size)
            wait = min(MAX_PAUSE, max(MIN_PAUSE, held * PAUSE_RATIO if paced else 0.0)) if pause is None else pause
            if wait:
                time.sleep(wait)
    if not dry_run:  # idempotency keys carried in without a message row (issue 29): the messages' retention
        keys = db.write(lambda tx: tx.execute("DELETE FROM idempotency_keys WHERE created_at < ?", (cutoff,)).rowcount)
        if keys:
            log.info("pruned_keys", removed=keys, cutoff=cutoff)
    result.seconds = time.perf_counter() - started
    log.info("pruned", dry_run=dry_run, cutoff=cutoff, removed=result.removed, batches=result.batches,
             seconds=round(result.seconds, 3))
    return result
