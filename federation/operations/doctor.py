"""``federation doctor``: health checks an operator runs (or a monitor runs for them).

Each check says whether it passed, what it found, and — when it failed — the
command that fixes it.  The checks only read: the doctor never creates a
database, never upgrades or repairs one, and never touches a legacy file.

Checks: database integrity (``PRAGMA quick_check``; on PostgreSQL a
connection and the schema's tables), schema version, backfill, WAL size, free
space on the database's and the root's filesystems, a SQLite database on a
network filesystem, unreadable legacy files (the migration's reader), and
files and database differing (the consistency report's comparison).
"""

from __future__ import annotations

import dataclasses
import os
import sqlite3
import urllib.parse
from pathlib import Path
from typing import Any, Callable

from .. import config
from ..stores import schema
from .._logging import library_logger
from ..stores.database import database_exists, network_fs_type

__all__ = ["Check", "DoctorReport", "doctor", "WAL_LIMIT_BYTES", "MIN_FREE_BYTES"]

log = library_logger("federation.doctor")

#: A WAL larger than this means checkpoints are starved (a reader that never ends).
WAL_LIMIT_BYTES = 256 * 1024 * 1024
#: Free space below this (or below 10 % of a smaller filesystem) fails the free-space checks.
MIN_FREE_BYTES = 256 * 1024 * 1024

_RESTORE_FIX = ("stop the agents, then restore the last verified backup: `federation restore --from "
                "/path/to/backup.db` (it sets the flag to the "
                "phase whose side is the newest before naming the repair; docs/operations.md, \"Backup and restore\"); "
                "without a backup, `federation sync --to db` from the files in phases 1-2 (in 3-4 the database is "
                "authoritative: `--force --reason TEXT` only when the files are all that is left)")


@dataclasses.dataclass
class Check:
    name: str
    ok: bool
    detail: str
    fix: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "ok": self.ok, "detail": self.detail, "fix": None if self.ok else self.fix}


@dataclasses.dataclass
class DoctorReport:
    checks: list[Check]

    @property
    def healthy(self) -> bool:
        return all(c.ok for c in self.checks)

    def to_json(self) -> dict[str, Any]:
        return {"healthy": self.healthy, "checks": [c.to_json() for c in self.checks]}


def _existing(path: Path) -> Path:
    """*path* or its nearest existing ancestor (statvfs needs something that exists)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _mount_point(path: Path) -> Path:
    path = _existing(path).resolve()
    while not os.path.ismount(path) and path != path.parent:
        path = path.parent
    return path


def _free_space(name: str, what: str, path: Path, min_free: int) -> Check:
    where = _existing(path)
    st = os.statvfs(where)
    free, size = st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize
    need = min(min_free, size // 10)
    mount = _mount_point(where)
    detail = f"{what} {path}: {free / 2**20:.1f} MiB free of {size / 2**20:.1f} MiB on {mount}"
    fix = (f"free space on {mount} (df -h {mount}); `federation prune --older-than 30d` removes old read "
           "messages, and old backups may go")
    return Check(name, free >= need and free > 0, detail + ("" if free >= need and free > 0
                                                             else f" (below {need / 2**20:.1f} MiB)"), fix)


def _sqlite_checks(s: config.Settings, checks: list[Check], wal_limit: int, mounts_file: str) -> bool:
    """Integrity, schema, WAL, network filesystem; True when the database can be compared with the files."""
    path = s.db_path
    fs = network_fs_type(path if path.exists() else _existing(path.parent), mounts_file)
    checks.append(Check(
        "network_filesystem", fs is None,
        f"{path} is on a network filesystem ({fs}): SQLite's WAL and locks are unsafe there" if fs else
        f"{path} is on a local filesystem",
        "stop the agents and move the database (and its -wal/-shm) to a local disk, pointing FEDERATION_DB "
        "there, or use PostgreSQL: FEDERATION_DB_URL=postgresql://user@host/dbname (README, \"SQLite or "
        "PostgreSQL\")"))
    if not path.exists():
        checks.append(Check("database_integrity", True, f"no database at {path} yet (created on first use)"))
        checks.append(Check("schema_version", True, "no database yet"))
        checks.append(Check("wal_size", True, "no database yet"))
        return False
    fix = _RESTORE_FIX.format(db=path)
    version = None
    try:
        # quoted: a "#" or "?" in the path would otherwise end it, and another file would be opened (or made)
        conn = sqlite3.connect(f"file:{urllib.parse.quote(str(Path(path).absolute()))}?mode=ro", uri=True, timeout=5)
        try:
            problems = [r[0] for r in conn.execute("PRAGMA quick_check").fetchall()]
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if "schema_version" in tables:
                version = int(conn.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] or 0)
        finally:
            conn.close()
    except sqlite3.Error as exc:
        checks.append(Check("database_integrity", False, f"{path}: {exc}", fix))
        checks.append(Check("schema_version", False, "unknown: the database cannot be read", fix))
        tables, problems = set(), None
    if problems is not None:
        ok = problems == ["ok"]
        checks.append(Check("database_integrity", ok, f"{path}: quick_check " + (
            "ok" if ok else "found: " + "; ".join(problems[:5])), fix))
        checks.append(_schema_check(version, tables, str(path)))
    wal = Path(f"{path}-wal")
    size = wal.stat().st_size if wal.exists() else 0
    checks.append(Check(
        "wal_size", size <= wal_limit, f"{wal}: {size / 2**20:.1f} MiB (limit {wal_limit / 2**20:.0f} MiB)",
        f"sqlite3 {path} 'PRAGMA wal_checkpoint(TRUNCATE);' — if it stays large, a reader never ends: "
        f"find it with fuser {path} and restart it"))
    return problems == ["ok"] and version == schema.LATEST


def _schema_check(version: int | None, tables: set[str], where: str) -> Check:
    missing = sorted(set(schema.TABLES) - tables)
    if version is None or (version == 0 and not tables - {"schema_version"}):
        return Check("schema_version", True, f"{where}: no schema yet (created on first use)")
    if version > schema.LATEST:
        return Check("schema_version", False,
                     f"{where}: schema version {version} is newer than this package's ({schema.LATEST})",
                     "pip install --upgrade federation (every agent and this CLI)")
    if missing:
        return Check("schema_version", False, f"{where}: schema version {version} but tables missing: "
                     f"{', '.join(missing)}", _RESTORE_FIX.format(db=where))
    if version < schema.LATEST:
        return Check("schema_version", True,
                     f"{where}: schema version {version}; agents upgrade it to {schema.LATEST} on first use")
    return Check("schema_version", True, f"{where}: schema version {version} (current)")


def _postgres_checks(s: config.Settings, checks: list[Check]) -> bool:
    from ..stores.database import BUSY_DEADLINE_S, dialect_for

    dialect = dialect_for(s)
    try:
        conn = dialect.connect(BUSY_DEADLINE_S)
    except Exception as exc:  # noqa: BLE001 - any failure to connect is the finding
        checks.append(Check("database_integrity", False, f"cannot connect to {s.db_display}: {exc}",
                            "check that the server runs and accepts this role (pg_isready -d URL; "
                            "psql URL -c 'select 1')"))
        checks.append(Check("schema_version", False, "unknown: no connection", "see database_integrity"))
        return False
    try:
        tables = {r[0] for r in conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()").fetchall()}
        version = None
        if "schema_version" in tables:
            version = int(conn.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] or 0)
    finally:
        conn.close()
    checks.append(Check("database_integrity", True, f"{s.db_display}: connected; the server checks its own pages"))
    checks.append(_schema_check(version, tables, s.db_display))
    checks.append(Check("wal_size", True, "not applicable on PostgreSQL (the server manages its WAL)"))
    return version == schema.LATEST


def doctor(settings: config.Settings, *, wal_limit: int = WAL_LIMIT_BYTES,
           min_free: int = MIN_FREE_BYTES, mounts_file: str = "/proc/self/mounts",
           extra: list[Callable[[config.Settings], Check]] | None = None) -> DoctorReport:
    """Run every check against the federation of *settings*; read-only."""
    from ..transfer.rows import read_tree

    s = settings
    phase = phase_in_effect(s)
    checks: list[Check] = []
    comparable = (_postgres_checks(s, checks) if s.db_url
                  else _sqlite_checks(s, checks, wal_limit, mounts_file))
    if not s.db_url:
        checks.append(_free_space("free_space_database", "database", s.db_path, min_free))
    checks.append(_free_space("free_space_root", "legacy root", s.root, min_free))

    tree = read_tree(s.root)
    checks.append(_legacy_files_check(s, phase, tree))
    checks.append(_control_files_check(s))

    store = None
    if comparable:
        from ..stores.sqlstore import get_store

        store = get_store(s)
        backfilled = store.meta("backfilled_at")
        need = phase >= 3 and backfilled is None and tree.files > 0
        checks.append(Check("backfilled", not need,
                            f"backfilled at {backfilled}" if backfilled else
                            ("never backfilled, and phase 3/4 refuses to serve it" if need else
                             "never backfilled (needed before phase 3)"),
                            "federation migrate"))
    checks.append(_files_vs_database(s, phase, tree, store))
    checks.append(_dead_letters_check(s, phase, store is not None or phase <= 2))
    checks.append(_fleet_check(s))
    checks.append(_unannounced_check(s))
    checks.append(_open_files_check(s))
    for make in extra or ():
        checks.append(make(s))
    report = DoctorReport(checks)
    log.info("doctor_ran", healthy=report.healthy, failed=[c.name for c in checks if not c.ok])
    return report


def _legacy_files_check(s: config.Settings, phase: int, tree: Any) -> Check:
    """Files that cannot be read, and JSON documents the layout has no place for (nothing of theirs is in the
    database): not ok, unless an operator accepted each (``migrate --accept``) and its content is unchanged."""
    from ..transfer.leftovers import not_imported
    from .accepted import apply_decisions

    unimported, _ = not_imported(tree.dropped_fields, s.root)
    bad, unimported, accepted = apply_decisions(s.root, tree.invalid, unimported)
    noted = (f"; {len(accepted)} files accepted by an operator (`federation migrate --accept`), content unchanged, "
             "not imported" if accepted else "")
    if not bad and not unimported:
        return Check("legacy_files", True, f"{tree.files} legacy files under {s.root}, "
                     + ("the rest readable" if accepted else "all readable") + noted)
    found = []
    if bad:
        found.append(f"{len(bad)} problems in the {tree.files} legacy files: " + "; ".join(
            f"{i['path']}: {i['reason']}" for i in bad[:5]) + (" ..." if len(bad) > 5 else ""))
    if unimported:
        found.append(f"{len(unimported)} JSON documents the layout has no place for, not imported: " + "; ".join(
            f"{n['path']} ({'?' if n['records'] is None else n['records']} records, {n['bytes']} bytes)"
            for n in unimported[:5]) + (" ..." if len(unimported) > 5 else ""))
    if tree.unknown:  # a document of the layout that cannot be read: restored, never moved away
        from ..domain.authority import restore_advice

        repair = f"restore the unreadable documents: {restore_advice(phase, tree.unknown.entities())}"
    else:
        repair = "repair each file (none is a document the layout reads)"
    return Check("legacy_files", False, " | ".join(found) + noted,
                 f"`federation migrate --dry-run` lists each file with its reason; {repair}, or accept a file "
                 "that may stay out of the database: `federation migrate --accept PATH --reason TEXT` "
                 "(docs/rollout-runbook.md)")


def _control_files_check(s: config.Settings) -> Check:
    """Links, FIFOs and the like under ``control/`` and ``.locks/`` (never followed or opened: the gate)."""
    from ..rollout import invalid_control_files

    bad = invalid_control_files(s.root)
    return Check("control_files", not bad,
                 "control/ and .locks/ hold only regular files and folders" if not bad else
                 f"{len(bad)} invalid entries under control/ or .locks/: " + "; ".join(
                     f"{i['path']}: {i['reason']}" for i in bad[:5]) + (" ..." if len(bad) > 5 else ""),
                 "remove each (a link, FIFO or hard link planted under the root); the federation never follows "
                 "or opens it")


def _dead_letters_check(s: config.Settings, phase: int, readable: bool) -> Check:
    """Messages delivered the maximum number of times and never acknowledged (docs/delivery.md): shown,
    not a failure (the store is fine; an agent could not finish them)."""
    if not readable:
        return Check("dead_letters", True, "not counted: the database cannot be read")
    from .. import core  # the module, not its names: the shim is installed on it
    from ..stores.dead_letters import dead_letter_summary

    summary = dead_letter_summary(phase, settings=s, read_files=core.FILE_SIDE["load_dead_letters"])
    if not summary["count"]:
        return Check("dead_letters", True, "no dead letters")
    return Check("dead_letters", True,
                 f"{summary['count']} dead letters (oldest since {summary['oldest_dead_at']}, "
                 f"{summary['oldest_age_s']:.0f} s): messages delivered {config.max_attempts()} times and never "
                 "acknowledged; messaging.dead_letters(agent) lists an agent's, ack(agent, ids) clears them")


def phase_in_effect(s: config.Settings) -> int:
    """The phase the federation's unpinned processes are in: this process's pin, else the live flag, else 3.

    Read without joining the fleet (the doctor is not an agent and must not announce itself).
    """
    if s.phase_pinned:
        return s.effective_phase
    from ..rollout import current_phase

    return current_phase(s.root, settings=s)[0]


def _describe(process: dict) -> str:
    agent = f" (agent {process['agent']})" if process.get("agent") else ""
    return f"{process.get('host')}:{process.get('pid')}{agent} in phase {process.get('phase')}"


def _unannounced_check(s: config.Settings) -> Check:
    """No legacy file seen half-written lately: a writer outside the fleet (docs/adopting.md, section 5)."""
    from .. import rollout

    guard = rollout.unannounced_writers(rollout.fleet(settings=s))
    return Check("unannounced_writers", guard["ok"], guard["detail"], guard["fix"] or None)


def _fleet_check(s: config.Settings) -> Check:
    """No live phase-4 process beside a live phase-1/2 one (phase 4 stops writing the files they read)."""
    from .. import rollout

    fleet = rollout.fleet(settings=s)
    pairs = rollout.unsafe_mix(fleet)
    alive = [p for p in fleet if p.get("alive")]
    if not pairs:
        phases = sorted({p.get("phase") for p in alive}, key=str)
        return Check("fleet_phases", True, f"{len(alive)} live processes, phases {phases or 'none'}: a safe mix")
    shown = "; ".join(f"{_describe(a)} beside {_describe(b)}" for a, b in pairs[:3])
    return Check("fleet_phases", False,
                 f"unsafe mix of phases: {shown}" + (f" and {len(pairs) - 3} more pairs" if len(pairs) > 3 else "")
                 + "; phase 4 no longer writes the files phases 1-2 read, so their writes hide each other's",
                 "federation rollout set 3 (safe beside both), then restart or re-pin processes whose "
                 "FEDERATION_PHASE / FEDERATION_USE_DB pins them (`federation rollout status` lists each with its "
                 "source)")


#: Worker threads of one `serve --http` process (federation.apps.mcp_http: MAX_WAITING_TOTAL +
#: THREADS_BESIDE_WAITING, and the event loop's own).
HTTP_THREADS = 64 + 40 + 1
#: Descriptors a process holds whatever its traffic (interpreter, log, listening socket, control plane).
BASE_DESCRIPTORS = 64
#: Agent connections one `serve --http` process is sized for (each connected agent holds one socket).
HTTP_AGENT_CONNECTIONS = 256


def http_descriptors_needed(engine: str) -> int:
    """Open files one `serve --http` process (or each of its ``--workers``: the limit is per process) may hold
    at once: a base, per thread a database connection (SQLite: the database, its WAL and shared memory;
    PostgreSQL: a socket) and the lock files of one call (phases 1-3), and :data:`HTTP_AGENT_CONNECTIONS`."""
    per_thread = (3 if engine == "sqlite" else 1) + 2
    return BASE_DESCRIPTORS + HTTP_THREADS * per_thread + HTTP_AGENT_CONNECTIONS


def _soft_open_files(pid: int | None = None) -> int | None:
    import resource

    try:
        soft, _hard = resource.prlimit(pid, resource.RLIMIT_NOFILE) if pid else \
            resource.getrlimit(resource.RLIMIT_NOFILE)
    except (OSError, AttributeError, ValueError):  # gone, not ours, or no prlimit on this system
        return None
    return None if soft == resource.RLIM_INFINITY else soft


def _open_files_check(s: config.Settings) -> Check:
    """The open-file limit of each live `serve --http` process of this host (each worker: the limit is per
    process), else of this environment (a server started from it inherits it), against what one needs."""
    import socket

    from .. import rollout

    need = http_descriptors_needed(s.engine)
    here = socket.gethostname()
    servers = [p for p in rollout.fleet(settings=s) if p.get("alive") and p.get("host") == here
               and str(p.get("agent") or "").startswith("http@")]
    limits = {p["pid"]: _soft_open_files(p["pid"]) for p in servers}
    low = {pid: limit for pid, limit in limits.items() if limit is not None and limit < need}
    fix = (f"raise the open-file limit of `federation serve --http` to at least {need} (systemd: LimitNOFILE=; "
           f"a shell: ulimit -n {need}), or run more --workers so that each serves fewer agents")
    if servers:
        if low:
            shown = ", ".join(f"pid {pid}: {limit}" for pid, limit in sorted(low.items()))
            return Check("open_file_limit", False, f"{len(low)} of {len(servers)} HTTP server processes have an "
                         f"open-file limit under the {need} one may need ({shown})", fix)
        known = sorted({v for v in limits.values() if v is not None})
        return Check("open_file_limit", True, f"{len(servers)} HTTP server processes, open-file limit "
                     f"{'/'.join(map(str, known)) or 'unknown'} (each may need {need})")
    own = _soft_open_files()
    if own is not None and own < need:
        return Check("open_file_limit", False, f"the open-file limit here is {own}: a `serve --http` started "
                     f"from this environment may need {need} (per process; each --workers process alike)", fix)
    return Check("open_file_limit", True, f"open-file limit {own or 'unlimited'} (a `serve --http` process "
                 f"may need {need})")


def _files_vs_database(s: config.Settings, phase: int, tree: Any, store: Any) -> Check:
    """The consistency report's comparison, on the tree already read for ``legacy_files``.

    A legacy document that could not be read is unknown: never "agree", in any phase."""
    if tree.unknown:
        from ..domain.authority import restore_advice

        listed = tree.unknown.entries()
        return Check("files_vs_database", False,
                     f"not compared: {len(listed)} legacy document(s) could not be read (unknown, not empty): "
                     + "; ".join(f"{u['path']}: {u['reason']}" for u in listed[:3]) + (" ..." if len(listed) > 3 else ""),
                     restore_advice(phase, tree.unknown.entities()))
    if store is None:
        if not database_exists(s):
            return Check("files_vs_database", phase == 1 or tree.files == 0,
                         f"no database yet; {tree.files} legacy files not migrated", "federation migrate")
        return Check("files_vs_database", phase == 1 or tree.files == 0,
                     "not compared: the database cannot be read or has no current schema",
                     "fix the database checks above, then `federation report`")
    from ..transfer.rows import read_db
    from ..transfer.report import Sides, compare_sides

    sides = Sides(tree, read_db(store))
    report = compare_sides(sides, diff_limit=0)
    if not report.consistent and phase in (2, 3):  # a write in flight is not a difference: re-read under its lock
        from ..transfer.report import recheck_differences as recheck

        report = recheck(s.root, sides, report, store)
    entities = report.entities
    differing = {n: len(t.missing_in_db) + len(t.missing_in_files) + len(t.different)
                 for n, t in entities.items() if not t.consistent}
    summary = ", ".join(f"{n}: {c}" for n, c in differing.items())
    if not differing:
        return Check("files_vs_database", True, "files and database agree (federation report)")
    if phase == 4:
        return Check("files_vs_database", True, f"phase 4: the files are retired and differ ({summary}); "
                     "run `federation sync --to files` before any rollback")
    if phase == 1:
        return Check("files_vs_database", True, f"phase 1: the database is not written and differs ({summary}); "
                     "`federation migrate` and `federation sync --to db` bring it up before phase 2")
    side = "db" if phase == 2 else "files"
    return Check("files_vs_database", False,
                 f"phase {phase}: files and database differ ({summary}); `federation report` lists them",
                 f"federation sync --to {side}")
