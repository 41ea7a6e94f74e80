"""SQLite: the embedded default, for a federation whose processes share one host."""

from __future__ import annotations

import contextlib
import contextvars
import fcntl
import os
import sqlite3
import threading
import time
from pathlib import Path

from typing import Any, Iterator

from .dialect import Dialect
from .netfs import network_fs_type
from .wait import _poll
from ..errors import StorageError

__all__ = ["SqliteDialect", "SqliteWatcher", "GateBusy", "FIRST_WRITE_MUST_NOT_WAIT"]

#: Set (True) by a caller that must not wait for the write gate before its first write: a gate another
#: thread or process holds raises :class:`GateBusy` instead, before anything of the call is written.
#: Cleared once the gate is held, so that a call's later writes wait as usual (the HTTP server runs a
#: call on its event loop this way, and on a worker thread when it hears GateBusy).
FIRST_WRITE_MUST_NOT_WAIT: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "federation_first_write_must_not_wait", default=False)


#: The page cache of each connection, in KiB (``PRAGMA cache_size = -N``; SQLite's default is 2,000 KiB).
#: A process keeps up to ``FEDERATION_DB_CONNECTIONS`` (8) pooled connections, each one's cache filling
#: with the pages it touches as the database grows: 8 x 2 MB held for good, which a server reached only
#: after tens of minutes of traffic (its memory stepping up late, issue 30).  The pages of a WAL
#: database stay in the operating system's cache, so a smaller one costs a read() from memory, not from
#: disk.  A bulk load (migrate, restore) has SQLite's default for its block.
CACHE_KIB = 512
#: SQLite's own default (``PRAGMA cache_size = -2000``), for a bulk load's block.
BULK_CACHE_KIB = 2000


class GateBusy(Exception):
    """The write gate is held by another writer and the caller said it must not wait (nothing was written)."""


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
    one_writer = True

    def __init__(self, path: Path, mounts_file: str = "/proc/self/mounts"):
        self.path = Path(path)
        self.mounts_file = mounts_file
        # One descriptor of the write lock per process, shared by its threads under a lock: a
        # descriptor per thread outlived its thread (an MCP server's idle worker threads leaked one each)
        self._gate_lock = threading.RLock()
        self._gate_fd: int | None = None
        self._gate_pid: int | None = None
        self._gate_depth = 0

    def describe(self) -> str:
        return str(self.path)

    def connect(self, busy_deadline_s: float, time_left: float | None = None) -> sqlite3.Connection:
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
        conn = sqlite3.connect(str(self.path), timeout=busy_deadline_s, isolation_level=None,
                               check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout = {int(busy_deadline_s * 1000)}")
        mode = None
        deadline = time.monotonic() + busy_deadline_s
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
        conn.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
        return conn

    @contextlib.contextmanager
    def write_gate(self):
        if self._gate_pid != os.getpid():
            # a forked child (one thread so far): the parent's descriptor would not exclude the parent,
            # and its lock may have been copied held
            self._gate_lock, self._gate_fd, self._gate_pid, self._gate_depth = threading.RLock(), None, os.getpid(), 0
        no_wait = FIRST_WRITE_MUST_NOT_WAIT.get()
        if not self._gate_lock.acquire(blocking=not no_wait):  # the threads of this process, one at a time
            raise GateBusy()  # (re-entrant within a thread)
        try:
            if self._gate_fd is None:
                self._gate_fd = os.open(str(self.path) + ".writelock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            fd = self._gate_fd
            if self._gate_depth == 0:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | (fcntl.LOCK_NB if no_wait else 0))  # the other processes
                except BlockingIOError:
                    raise GateBusy() from None
            if no_wait:
                FIRST_WRITE_MUST_NOT_WAIT.set(False)  # held: the call's next writes wait as usual
            self._gate_depth += 1
            try:
                yield
            finally:
                self._gate_depth -= 1
                if self._gate_depth == 0:
                    fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            self._gate_lock.release()

    def begin_write(self, conn: sqlite3.Connection, snapshot: bool = False) -> None:
        conn.execute("BEGIN IMMEDIATE")  # one writer at a time: every write is serialisable

    def begin_read(self, conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN")

    def checkpoint(self, conn: sqlite3.Connection) -> None:
        # PASSIVE: copies what no reader still needs, waits for no one, and takes no write lock
        conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()

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

    def watcher(self, agent: str) -> "SqliteWatcher":
        return SqliteWatcher(str(self.path))

    @contextlib.contextmanager
    def bulk_load(self, db: Any) -> Iterator[None]:
        """No automatic WAL checkpoint while importing (each one fsyncs the database), one after.

        Measured: 100,000 message rows in about 1.2 s instead of 1.4-1.9 s, plus
        about 0.13 s for the checkpoint at the end.  The connection's setting is
        put back, so a long-lived process keeps its usual checkpoints.  The setting is the connection's: the
        import's thread keeps one connection for the whole block (``Database.pinned``), with SQLite's
        default page cache (:data:`BULK_CACHE_KIB`) for the block, then the pool's small one again.
        """
        with db.pinned():
            before = db.fetchone("PRAGMA wal_autocheckpoint")[0]
            cache = db.fetchone("PRAGMA cache_size")[0]
            db.fetchone("PRAGMA wal_autocheckpoint = 0")
            db.fetchone(f"PRAGMA cache_size = -{BULK_CACHE_KIB}")
            try:
                yield
            finally:
                db.fetchone(f"PRAGMA cache_size = {int(cache)}")
                db.fetchone(f"PRAGMA wal_autocheckpoint = {int(before)}")
                db.fetchone("PRAGMA wal_checkpoint(PASSIVE)")


DIALECT = SqliteDialect


class SqliteWatcher:
    INTERVAL = 0.01

    def __init__(self, path: str):
        conn = _sqlite_conns.get(path)
        if conn is None or conn[1] != os.getpid():
            conn = _sqlite_conns[path] = (sqlite3.connect(path, isolation_level=None, check_same_thread=False),
                                          os.getpid(), threading.Lock())
        self.conn, _, self.lock = conn
        self.seen = self._version()

    def _version(self) -> int:
        with self.lock:
            return self.conn.execute("PRAGMA data_version").fetchone()[0]

    def changed(self, timeout: float) -> bool:
        return _poll(self, self._version, timeout)


_sqlite_conns: dict[str, tuple] = {}
