"""Database connection manager: ``get_db()``, ``execute()``, ``fetchall()``.

One :class:`Database` per target (SQLite file or PostgreSQL URL) per process,
one connection per thread.  The schema is created on first use and upgraded
through ``schema_version``.  Writes run as functions inside a write
transaction and are retried on contention, so "database is locked" never
reaches a caller: after a bounded wait it becomes a :class:`StorageError`.

The SQL text is shared by the engines; :class:`Dialect` holds the few
differences (placeholders, how a write transaction starts, row locks, the
auto-increment key, which errors are worth a retry).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence, TypeVar

from shim import library_logger

from . import config, schema
from .errors import ConfigError, FederationError, StorageError

__all__ = ["Database", "Dialect", "SqliteDialect", "get_db", "execute", "fetchall", "network_fs_type"]

log = library_logger("federation.database")
T = TypeVar("T")

#: How long a write may wait for a busy database before the caller gets an error.
BUSY_DEADLINE_S = 30.0

NETWORK_FS = {
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "ncpfs", "afs", "9p", "ceph", "glusterfs", "lustre",
    "gpfs", "beegfs", "davfs", "fuse.sshfs", "sshfs", "fuse.glusterfs", "fuse.ceph", "fuse.s3fs",
    "fuse.rclone", "fuse.gcsfuse", "fuse.davfs", "orangefs", "ocfs2", "gfs2",
}


def network_fs_type(path: Path, mounts_file: str = "/proc/self/mounts") -> str | None:
    """The type of the network filesystem *path* lives on, or None if local."""
    target = os.path.realpath(path)
    try:
        with open(mounts_file, encoding="utf-8", errors="replace") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return None
    best, best_type = "", None
    for line in lines:
        parts = line.split()
        if len(parts) < 3:
            continue
        mount_point = parts[1].replace("\\040", " ")
        if target == mount_point or target.startswith(mount_point.rstrip("/") + "/") or mount_point == "/":
            if len(mount_point) >= len(best):
                best, best_type = mount_point, parts[2]
    if best_type and (best_type in NETWORK_FS or best_type.split(".")[0] in {"nfs", "cifs"}):
        return best_type
    return None


class Tx:
    """What a transaction function receives: statements with ``?`` placeholders."""

    __slots__ = ("conn", "dialect", "_cur")

    def __init__(self, conn: Any, dialect: "Dialect", cursor: Any = None):
        self.conn = conn
        self.dialect = dialect
        self._cur = cursor if cursor is not None else conn.cursor()

    def execute(self, sql: str, params: Sequence = ()) -> Any:
        return self._cur.execute(self.dialect.sql(sql), params)

    def executemany(self, sql: str, rows: Iterable[Sequence]) -> None:
        self._cur.executemany(self.dialect.sql(sql), rows)

    def fetchall(self, sql: str, params: Sequence = ()) -> list[tuple]:
        self._cur.execute(self.dialect.sql(sql), params)
        return self._cur.fetchall()

    def fetchone(self, sql: str, params: Sequence = ()) -> tuple | None:
        self._cur.execute(self.dialect.sql(sql), params)
        return self._cur.fetchone()

    @property
    def rowcount(self) -> int:
        return self._cur.rowcount


class Dialect:
    """What differs between database engines."""

    name = "abstract"
    id_pk = "INTEGER PRIMARY KEY"
    single_statement_autocommit = False  # may one statement run without BEGIN/COMMIT?
    for_share = ""  # row lock taken when a write reads a row it depends on
    for_update = ""

    def sql(self, text: str) -> str:
        return text

    def connect(self) -> Any:
        raise NotImplementedError

    def begin_write(self, conn: Any, snapshot: bool = False) -> None:
        """Start a write transaction; *snapshot*: one that reads a document and writes it back."""
        raise NotImplementedError

    def begin_read(self, conn: Any) -> None:
        raise NotImplementedError

    def commit(self, conn: Any) -> None:
        conn.commit()

    def rollback(self, conn: Any) -> None:
        conn.rollback()

    def lock(self, tx: Tx, name: str) -> None:
        """Hold the lock *name* until the transaction ends (a no-op where writers are serialised)."""

    def is_retryable(self, exc: BaseException) -> bool:
        return False

    def is_disconnect(self, exc: BaseException) -> bool:
        return False

    def is_database_error(self, exc: BaseException) -> bool:
        """An engine error that is not a bug in our SQL: corrupt file, disk full, permissions."""
        return False

    @contextlib.contextmanager
    def write_gate(self):
        yield

    def describe(self) -> str:
        return self.name

    def exists(self) -> bool:
        return True


class SqliteDialect(Dialect):
    """SQLite in WAL mode; writers queue on an flock before ``BEGIN IMMEDIATE``.

    SQLite's own busy handler sleeps in steps of milliseconds, which leaves
    the database idle most of the time when many processes write; an flock
    hands the write lock to the next waiter as soon as it is released.  The
    busy timeout stays as the second line of defence (other tools, readers
    during a checkpoint).
    """

    name = "sqlite"
    id_pk = "INTEGER PRIMARY KEY AUTOINCREMENT"
    single_statement_autocommit = True

    def __init__(self, path: Path, mounts_file: str = "/proc/self/mounts"):
        self.path = Path(path)
        self.mounts_file = mounts_file
        self._gate = threading.local()  # this thread's descriptor of the write lock, and its pid

    def describe(self) -> str:
        return str(self.path)

    def exists(self) -> bool:
        return self.path.exists()

    def connect(self) -> sqlite3.Connection:
        fs = network_fs_type(self.path.parent if not self.path.exists() else self.path, self.mounts_file)
        if fs:
            raise StorageError(
                f"the SQLite database {self.path} is on a network filesystem ({fs}). SQLite's WAL needs "
                "shared memory on one host and POSIX locks are unreliable there, so concurrent agents "
                "would corrupt it. Put FEDERATION_DB on a local disk, or, for a federation that spans "
                "hosts, use PostgreSQL: set FEDERATION_DB_URL=postgresql://user@host/dbname (README, "
                "section \"SQLite or PostgreSQL\")"
            )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(str(self.path), timeout=BUSY_DEADLINE_S, isolation_level=None,
                               check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout = {int(BUSY_DEADLINE_S * 1000)}")
        mode = None
        deadline = time.monotonic() + BUSY_DEADLINE_S
        while mode is None:
            try:
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            except sqlite3.OperationalError as exc:
                if not self.is_retryable(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
        if str(mode).lower() != "wal":
            raise StorageError(f"could not put {self.path} in WAL mode (journal_mode={mode})")
        # NORMAL in WAL mode: a crashed process loses nothing that committed;
        # only a power loss may lose the last transactions (DESIGN.md figures).
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA foreign_keys = ON")
        return conn

    @contextlib.contextmanager
    def write_gate(self):
        gate = self._gate
        if getattr(gate, "pid", None) != os.getpid():
            # per thread and per process: a descriptor shared with a forked parent would not exclude it
            gate.fd = os.open(str(self.path) + ".writelock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            gate.pid = os.getpid()
        fd = gate.fd
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    def begin_write(self, conn: sqlite3.Connection, snapshot: bool = False) -> None:
        conn.execute("BEGIN IMMEDIATE")  # one writer at a time: every write is serialisable

    def begin_read(self, conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN")

    def commit(self, conn: sqlite3.Connection) -> None:
        conn.execute("COMMIT")

    def rollback(self, conn: sqlite3.Connection) -> None:
        if conn.in_transaction:
            conn.execute("ROLLBACK")

    def is_database_error(self, exc: BaseException) -> bool:
        return isinstance(exc, (sqlite3.OperationalError, sqlite3.DatabaseError, OSError)) and not isinstance(
            exc, sqlite3.ProgrammingError)

    def is_retryable(self, exc: BaseException) -> bool:
        if not isinstance(exc, sqlite3.OperationalError):
            return False
        text = str(exc).lower()
        return "locked" in text or "busy" in text


class Database:
    """One database target: connections, schema, transactions with retries."""

    def __init__(self, dialect: Dialect, on_create: Callable[[Tx], None] | None = None):
        self.dialect = dialect
        self._local = threading.local()
        self._on_create = on_create
        self._schema_ready = False
        self._schema_lock = threading.Lock()

    # -- connections --------------------------------------------------------
    def _connection(self) -> Any:
        local = self._local
        conn = getattr(local, "conn", None)
        if conn is None or local.pid != os.getpid():
            try:
                conn = self.dialect.connect()
            except FederationError:
                raise
            except Exception as exc:
                # an unreachable server is retried by _run until the deadline; this is final
                if self.dialect.is_database_error(exc) and not self.dialect.is_disconnect(exc):
                    raise StorageError(f"cannot open the database {self.dialect.describe()}: {exc}") from exc
                raise
            local.conn, local.pid, local.depth = conn, os.getpid(), 0
        return conn

    def _drop_connection(self) -> None:
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        # A forked child inherits the parent's connection: closing it there would
        # end the parent's session (PostgreSQL) or break its locks (SQLite).
        if conn is not None and getattr(self._local, "pid", None) == os.getpid():
            with contextlib.suppress(Exception):
                conn.close()

    def close(self) -> None:
        self._drop_connection()

    # -- transactions -------------------------------------------------------
    def _run(self, fn: Callable[[Tx], T], write: bool, snapshot: bool = False, begin: bool = True) -> T:
        if not self._schema_ready:
            self.ensure_schema()
        local = self._local
        if getattr(local, "depth", 0) and local.pid == os.getpid():
            # already inside a transaction of this thread: join it
            conn = local.conn
            local.depth += 1
            try:
                return fn(Tx(conn, self.dialect))
            finally:
                local.depth -= 1
        deadline = time.monotonic() + BUSY_DEADLINE_S
        attempt = 0
        while True:
            attempt += 1
            gate = self.dialect.write_gate() if write else contextlib.nullcontext()
            try:
                conn = self._connection()  # first: it checks the target (e.g. SQLite on NFS)
                with gate:
                    if not begin:  # one statement in autocommit mode: atomic on its own
                        return fn(Tx(conn, self.dialect))
                    if write:
                        self.dialect.begin_write(conn, snapshot)
                    else:
                        self.dialect.begin_read(conn)
                    local.depth = 1
                    try:
                        result = fn(Tx(conn, self.dialect))
                        self.dialect.commit(conn)
                        return result
                    except BaseException:
                        with contextlib.suppress(Exception):
                            self.dialect.rollback(conn)
                        raise
                    finally:
                        local.depth = 0
            except FederationError:
                raise
            except Exception as exc:
                retry = self.dialect.is_retryable(exc)
                lost = self.dialect.is_disconnect(exc)
                if lost:
                    self._drop_connection()
                if not (retry or lost):
                    if self.dialect.is_database_error(exc):
                        raise StorageError(f"the database {self.dialect.describe()} failed: {exc}") from exc
                    raise
                if time.monotonic() > deadline:
                    what = "unreachable" if lost else "busy"
                    raise StorageError(
                        f"the database {self.dialect.describe()} stayed {what} for {BUSY_DEADLINE_S:.0f} s "
                        f"({attempt} attempts): {exc}"
                    ) from exc
                time.sleep(min(0.5, 0.001 * (2 ** min(attempt, 9))) * (0.5 + random.random()))

    def write(self, fn: Callable[[Tx], T], snapshot: bool = False) -> T:
        """Run *fn* in one write transaction (retried whole on contention).

        *snapshot*: *fn* reads rows and writes back what it computed from them
        without locking them; the engine must then fail (and this retry) the
        transaction if any of those rows changed meanwhile.
        """
        return self._run(fn, write=True, snapshot=snapshot)

    def read(self, fn: Callable[[Tx], T]) -> T:
        """Run *fn* in one read transaction (a consistent snapshot)."""
        return self._run(fn, write=False)

    def execute(self, sql: str, params: Sequence = ()) -> int:
        """Run one writing statement in its own transaction; the row count."""
        return self.write(lambda tx: tx.execute(sql, params).rowcount)

    def fetchall(self, sql: str, params: Sequence = ()) -> list[tuple]:
        """One reading statement (autocommit where the engine allows: no BEGIN/COMMIT round trips)."""
        return self._run(lambda tx: tx.fetchall(sql, params), write=False,
                         begin=not self.dialect.single_statement_autocommit)

    def fetchone(self, sql: str, params: Sequence = ()) -> tuple | None:
        return self._run(lambda tx: tx.fetchone(sql, params), write=False,
                         begin=not self.dialect.single_statement_autocommit)

    # -- schema -------------------------------------------------------------
    def schema_version(self) -> int:
        def fn(tx: Tx) -> int:
            try:
                row = tx.fetchone("SELECT MAX(version) FROM schema_version")
            except Exception:
                return 0
            return int(row[0] or 0) if row else 0

        ready, self._schema_ready = self._schema_ready, True  # reading the version must not create the schema
        try:
            return self.read(fn)
        finally:
            self._schema_ready = ready

    def ensure_schema(self) -> None:
        if self._schema_ready:
            return
        with self._schema_lock:
            if self._schema_ready:
                return
            self._schema_ready = True  # let _run through while we migrate
            try:
                self.write(self._migrate)
            except BaseException:
                self._schema_ready = False
                raise

    def _migrate(self, tx: Tx) -> None:
        from datetime import datetime, timezone

        # many processes may start on an empty database at once
        self.dialect.lock(tx, "federation.schema")
        tx.execute(schema.SCHEMA_VERSION_DDL)
        row = tx.fetchone("SELECT MAX(version) FROM schema_version")
        current = int(row[0] or 0) if row else 0
        if current > schema.LATEST:
            raise ConfigError(
                f"the database {self.dialect.describe()} has schema version {current}, newer than this "
                f"federation ({schema.LATEST}): upgrade the federation package"
            )
        created = current == 0
        for version, statements in schema.MIGRATIONS:
            if version <= current:
                continue
            for statement in statements:
                tx.execute(statement.format(id_pk=self.dialect.id_pk))
            tx.execute(
                "INSERT INTO schema_version (version, applied_at) VALUES (?, ?)",
                (version, datetime.now(timezone.utc).isoformat()),
            )
            log.info("schema_migrated", database=self.dialect.describe(), version=version)
        if created and self._on_create is not None:
            self._on_create(tx)


# ---------------------------------------------------------------------------
# module-level helpers, as the migration plan names them

_databases: dict[tuple, Database] = {}
_databases_lock = threading.Lock()


def dialect_for(settings: config.Settings) -> Dialect:
    if settings.db_url:
        try:
            from ._postgres import PostgresDialect  # imported only when asked for
        except ImportError as exc:
            raise ConfigError(
                f"FEDERATION_DB_URL selects PostgreSQL, but its driver cannot be imported ({exc}): "
                "pip install 'federation[postgresql]'"
            ) from exc
        return PostgresDialect(settings.db_url)
    return SqliteDialect(settings.db_path)


def get_db(settings: config.Settings | None = None, on_create: Callable[[Tx], None] | None = None) -> Database:
    """The :class:`Database` of the configured target (one per process)."""
    s = settings or config.settings()
    key = (s.db_url or str(s.db_path),)
    db = _databases.get(key)
    if db is None:
        with _databases_lock:
            db = _databases.get(key)
            if db is None:
                db = _databases[key] = Database(dialect_for(s), on_create=on_create)
    return db


def forget_databases() -> None:
    """Close every connection of this process (tests, forks)."""
    with _databases_lock:
        for db in _databases.values():
            db.close()
        _databases.clear()


def execute(sql: str, params: Sequence = ()) -> int:
    return get_db().execute(sql, params)


def fetchall(sql: str, params: Sequence = ()) -> list[tuple]:
    return get_db().fetchall(sql, params)
