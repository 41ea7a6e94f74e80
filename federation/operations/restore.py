"""``federation restore --from PATH``: put a verified backup in place of the SQLite database without ever
naming a repair that puts the backup's older state over newer data (issue 30).

What agents wrote after the backup is not in it.  Where it still is decides the phase the fleet must be
in before anything is repaired:

| fleet's phase | the newest side after the restore | the flag | then |
|---|---|---|---|
| 1, 2 | the files (authoritative, written all along) | unchanged | ``sync --to db`` (phase 2) / ``migrate`` (1) |
| 3 | the files: phase 3 wrote them too, after the backup | set to 2 (recorded) | ``sync --to db``, ``report``, then ``rollout set 3`` |
| 4 | the backup when it was taken after phase 4 began (the files stopped then); else the files | 4, or 2 | nothing to sync (writes after the backup are lost) / as phase 3 |

The database is replaced only while no process of the fleet is alive (they hold it open), unless forced
with a reason; the swap is a rename of a verified copy, so a failure leaves the database as it was.
"""

from __future__ import annotations

import dataclasses
import os
import sqlite3
from datetime import datetime
from pathlib import Path
from typing import Any

from .. import config
from .._logging import library_logger
from ..errors import FederationError, StorageError, ValidationError
from ..stores import schema

__all__ = ["RestoreResult", "restore"]

log = library_logger("federation.restore")


@dataclasses.dataclass
class RestoreResult:
    source: str
    database: str
    phase_before: int
    phase_after: int
    taken_at: str | None
    #: the commands to run next, in order (each safe in phase_after)
    next: list[str]
    note: str

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _verify(path: Path) -> str | None:
    """Check the backup *path* (a SQLite file with a federation schema no newer than this package's, intact);
    when it was taken (``backup_taken_at``), if it says."""
    if not path.is_file() or path.is_symlink():
        raise ValidationError(f"{path} is not a regular file: name the backup `federation backup` wrote")
    try:
        # as_uri() percent-encodes: a "%" or "#" in the name would otherwise open another file
        conn = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise StorageError(f"cannot open the backup {path}: {exc}") from exc
    try:
        try:
            problems = [r[0] for r in conn.execute("PRAGMA integrity_check").fetchall()]
            version = int(conn.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] or 0)
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            row = conn.execute("SELECT value FROM federation_meta WHERE key = 'backup_taken_at'").fetchone()
        except sqlite3.Error as exc:
            raise StorageError(f"{path} is not a federation backup: {exc}") from exc
    finally:
        conn.close()
    if problems != ["ok"]:
        raise StorageError(f"the backup {path} fails PRAGMA integrity_check: {'; '.join(problems[:5])}")
    if version == 0 or not {"messages", "polls", "federation_meta"} <= tables:
        raise StorageError(f"{path} holds no federation schema")
    if version > schema.LATEST:
        raise StorageError(f"the backup {path} has schema version {version}, newer than this package's "
                           f"({schema.LATEST}): upgrade the federation package first")
    return row[0] if row else None


def _phase_four_began(root: Path) -> datetime | None:
    from .. import rollout

    for entry in reversed(rollout.flag_history(root)):
        if entry.get("to") == 4:
            return rollout.parse_iso(entry.get("at"))
    return None


def restore(source: str | os.PathLike, *, force: bool = False, reason: str | None = None,
            settings: config.Settings) -> RestoreResult:
    """Replace the SQLite database of *settings*' federation with the backup *source* and put the fleet's flag
    where the newest side is authoritative (module docstring).  Refused (:class:`FederationError`) while a
    process of the fleet is alive, unless *force* with a *reason*; on PostgreSQL (``pg_restore``)."""
    from .. import rollout
    from ..stores.sqlstore import forget_stores

    s = settings
    if s.db_url:
        raise FederationError("`federation restore` restores SQLite backups; restore PostgreSQL with its own "
                              "tool (pg_restore --clean --dbname=URL FILE) with the agents stopped, then set the "
                              "flag to 2 (`federation rollout set 2 --force --reason ...`) if the fleet was in "
                              "phase 3, and run `federation sync --to db`")
    if force and not (reason and reason.strip()):
        raise ValidationError("--force needs --reason: say why the database is replaced under live processes")
    src = Path(source).expanduser()
    taken_at = _verify(src)
    alive = [p for p in rollout.fleet(settings=s) if p.get("alive")]
    if alive and not force:
        shown = ", ".join(f"{p.get('host')}:{p.get('pid')}" + (f" ({p['agent']})" if p.get("agent") else "")
                          for p in alive[:5])
        raise FederationError(f"refused: {len(alive)} process(es) of the fleet are alive ({shown}); they hold the "
                              "database open and would keep writing to the one replaced. Stop them, then restore "
                              "(`--force --reason TEXT` overrides)")
    phase = rollout.fleet_phase(s)
    target, note = _target(phase, taken_at, s.root)
    _swap(src, s.db_path)
    forget_stores()
    if target != phase:
        result = rollout.set_phase(target, force=True, settings=s,
                                   reason=f"restore of {src}: the files hold what was written after the backup")
        if not result.applied:  # pragma: no cover - forced steps are always applied
            raise FederationError(f"the database was restored but the flag could not be set to {target}")
    nxt = {1: ["federation migrate", "federation report"],
           2: ["federation sync --to db", "federation report"]}.get(target, ["federation report"])
    if phase == 3 and target == 2:
        nxt.append("federation rollout set 3")
    out = RestoreResult(str(src), str(s.db_path), phase, target, taken_at, nxt, note)
    log.info("restored", **out.to_json(), forced=force, reason=reason, at=rollout.iso(rollout.utcnow()))
    return out


def _target(phase: int, taken_at: str | None, root: Path) -> tuple[int, str]:
    """The phase whose authority is the newest side once the backup is in place, and why."""
    if phase in (1, 2):
        return phase, (f"phase {phase}: the files are authoritative and hold everything written since the backup; "
                       "the database catches up from them")
    if phase == 3:
        return 2, ("phase 3 wrote the files as well: they hold what was written after the backup, the restored "
                   "database does not; the flag goes to 2 (files authoritative) before any sync")
    from ..rollout import parse_iso

    began, taken = _phase_four_began(root), parse_iso(taken_at) if taken_at else None
    if taken is not None and began is not None and taken >= began:
        return 4, ("phase 4: the backup was taken after the files stopped being written, so it is the newest "
                   "copy there is; what was written after it is lost")
    return 2, ("phase 4: the backup is older than the last write of the files (or says no time), so the files "
               "are the newer side; the flag goes to 2 before any sync (writes after phase 4 began are lost)")


def _swap(src: Path, db: Path) -> None:
    """Copy *src* beside *db*, flush it, then rename it over *db* (its WAL and shared-memory files removed
    first: they belong to the database replaced)."""
    import shutil

    db.parent.mkdir(parents=True, exist_ok=True)
    tmp = db.parent / f".{db.name}.{os.getpid()}.restore-tmp"
    try:
        shutil.copyfile(src, tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        for extra in (Path(f"{db}-wal"), Path(f"{db}-shm")):
            extra.unlink(missing_ok=True)
        os.replace(tmp, db)
    finally:
        tmp.unlink(missing_ok=True)
