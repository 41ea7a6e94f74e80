"""The database façade: :class:`Database` and ``get_db()``.

One :class:`Database` per target (SQLite file or PostgreSQL URL) per process,
its connections pooled and shared by the threads (at most ``FEDERATION_DB_CONNECTIONS`` kept open between
transactions).  The schema is created on first use and upgraded
through ``schema_version``.  Writes run as functions inside a write
transaction and are retried on contention, so "database is locked" never
reaches a caller: after a bounded wait it becomes a :class:`StorageError`.

What differs between engines is a :class:`~federation.stores.dialect.Dialect`
(:mod:`federation.stores.sqlite`, :mod:`federation.stores.postgres`); this module only
chooses one.
"""

from __future__ import annotations

import contextlib
import os
import random
import threading
import time
import weakref
from typing import Any, Callable, Iterator, Sequence, TypeVar

from .. import config
from . import schema
from .dialect import Dialect, Tx, dialect_for_url
from .._logging import library_logger
from .netfs import network_fs_type
from .sqlite import SqliteDialect
from ..errors import ConfigError, FederationError, StorageError

__all__ = ["Database", "Dialect", "SqliteDialect", "Tx", "get_db", "dialect_for", "forget_databases",
           "network_fs_type", "BUSY_DEADLINE_S"]

log = library_logger("federation.database")
T = TypeVar("T")

#: How long a write may wait for a busy database before the caller gets an error.
BUSY_DEADLINE_S = 30.0
#: How long a thread waits for a pooled connection when every kept one is busy, before it opens one more.
POOL_WAIT_S = 0.5


#: every Database of this process, for :func:`_after_fork`
_ALL: "weakref.WeakSet[Database]" = weakref.WeakSet()
#: a forked child's copies of its parent's connections: referenced, never closed (see Database._forked)
_ORPHANS: list[Any] = []


def _after_fork() -> None:
    for db in list(_ALL):
        db._forked()


class _Held(threading.local):
    """What a thread holds of one Database: the connection it borrowed, its transaction depth, its pins."""
    conn: Any = None
    depth = 0
    pins = 0


def _close_quietly(conn: Any) -> None:
    with contextlib.suppress(Exception):
        conn.close()


class Database:
    """One database target: connections, schema, transactions with retries.

    Connections are pooled per process and shared by its threads (issue 30): a thread borrows one for a
    transaction (or a :meth:`pinned` span) and gives it back after, so a process keeps at most
    :attr:`pool_size` connections open between transactions however many threads it runs (an HTTP server's
    worker pool runs up to a hundred).  A connection per thread kept each thread's page cache (2 MB each on
    SQLite), its statement cache and its malloc arena's share alive: the server's memory grew with its
    threads.  When every kept connection is busy a thread waits up to :data:`POOL_WAIT_S` for one (a
    transaction takes milliseconds), then opens one more, closed once given back if the pool is full: a
    thread never waits long for a connection (it may hold a file lock another borrower waits for), and
    connections are not opened and closed at every busy moment (each open parses the schema again).
    """

    def __init__(self, dialect: Dialect, on_create: Callable[[Tx], None] | None = None,
                 pool_size: int | None = None):
        self.dialect = dialect
        self.pool_size = config.db_connections() if pool_size is None else max(1, int(pool_size))
        self._new_pool()
        self._on_create = on_create
        self._schema_ready = False
        self._schema_lock = threading.Lock()
        self._schema_bypass = threading.local()  # this thread is making (or reading) the schema: no check
        _ALL.add(self)

    # -- connections --------------------------------------------------------
    def _new_pool(self) -> None:
        self._local = _Held()
        #: connections given back, the most recently used last.  ``list.pop``/``append`` are atomic, so a
        #: borrow and a give-back take no lock unless the pool is empty, over its size or waited for.
        self._idle: list[Any] = []
        self._pool_lock = threading.Lock()
        self._pool_freed = threading.Condition(self._pool_lock)  # a connection was given back
        self._waiting = 0  # threads waiting for a connection to be given back
        #: connections of this process opened so far, and closed so far (open now: the difference)
        self.opened = self.closed = 0

    def _forked(self) -> None:
        """In a forked child (:func:`os.register_at_fork`): forget the parent's connections without closing
        them (that would end the parent's session (PostgreSQL) or break its locks (SQLite)); they are kept
        referenced so that no finaliser closes them either.  The pool's lock may have been copied held."""
        _ORPHANS.extend(self._idle)
        conn = self._local.conn
        if conn is not None:
            _ORPHANS.append(conn)
        self._new_pool()

    def _open(self, deadline: float | None) -> Any:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            conn = self.dialect.connect(BUSY_DEADLINE_S, left)
        except FederationError:
            raise
        except Exception as exc:
            # an unreachable server is retried by _run until the deadline; this is final
            if self.dialect.is_database_error(exc) and not self.dialect.is_disconnect(exc):
                raise StorageError(f"cannot open the database {self.dialect.describe()}: {exc}") from exc
            raise
        with self._pool_lock:
            self.opened += 1
        return conn

    def _discard(self, conn: Any) -> None:
        """Close *conn* (this process's), counted."""
        _close_quietly(conn)
        with self._pool_lock:
            self.closed += 1

    def _connection(self, deadline: float | None = None) -> Any:
        """This thread's connection: the one it holds (in a transaction or a pin), else one borrowed from the
        pool (given back by :meth:`_give_back`)."""
        local = self._local
        conn = local.conn
        if conn is not None:
            return conn
        try:
            conn = self._idle.pop()  # the common case: one kept idle, taken without a lock
        except IndexError:
            conn = self._borrow(deadline)
        local.conn = conn
        local.depth = 0
        return conn

    def _borrow(self, deadline: float | None) -> Any:
        """None idle: wait a little for one if the pool is full, else (or then) open one more."""
        with self._pool_lock:
            if not self._idle and self.opened - self.closed >= self.pool_size:
                self._waiting += 1
                try:
                    self._pool_freed.wait_for(lambda: self._idle, timeout=POOL_WAIT_S)
                finally:
                    self._waiting -= 1
            if self._idle:
                return self._idle.pop()
        return self._open(deadline)

    def _give_back(self) -> None:
        """This thread is done with its connection (unless pinned): back to the pool, or closed if it is full."""
        local = self._local
        conn = local.conn
        if conn is None or local.pins or local.depth:
            return
        local.conn = None
        if not self._waiting and self.opened - self.closed <= self.pool_size:
            # no more open than the pool keeps, so this one has room among the idle; nobody to wake (a thread
            # that starts waiting between the test and the append misses this notify: it finds the
            # connection when its wait ends, at most POOL_WAIT_S later, or opens one)
            self._idle.append(conn)
            return
        with self._pool_lock:
            if len(self._idle) < self.pool_size:
                self._idle.append(conn)
                self._pool_freed.notify()
                return
        self._discard(conn)

    def _drop_connection(self) -> None:
        """Close this thread's connection (lost, or unknown state): never given back to the pool."""
        local = self._local
        conn = local.conn
        local.conn = None
        if conn is not None:
            self._discard(conn)

    @contextlib.contextmanager
    def pinned(self) -> Iterator[None]:
        """This thread keeps one connection for the block (every transaction in it runs on the same
        connection): for a connection's settings that must last several transactions (a bulk load's)."""
        local = self._local
        local.pins = local.pins + 1
        try:
            yield
        finally:
            local.pins -= 1
            self._give_back()

    def connections(self) -> dict[str, int]:
        """This process's connections to the database: ``open`` (borrowed or idle), ``idle``, ``opened`` and
        ``closed`` since the process began (or forked)."""
        with self._pool_lock:
            return {"open": self.opened - self.closed, "idle": len(self._idle), "opened": self.opened,
                    "closed": self.closed}

    def close(self) -> None:
        """Close this process's idle connections and this thread's (a connection another thread is using is
        given back to the pool when its transaction ends)."""
        local = self._local
        if local.conn is not None and not local.depth:
            self._drop_connection()
        while True:
            try:
                conn = self._idle.pop()
            except IndexError:
                break
            self._discard(conn)

    # -- transactions -------------------------------------------------------
    def _run(self, fn: Callable[[Tx], T], write: bool, snapshot: bool = False, begin: bool = True,
             idempotent: bool = True) -> T:
        if not self._schema_ready and not getattr(self._schema_bypass, "on", False):
            self.ensure_schema()
        local = self._local
        if local.depth:
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
                try:
                    conn = self._connection(deadline)  # first: it checks the target (e.g. SQLite on NFS)
                    if not idempotent and self.dialect.is_stale(conn):
                        # a statement that must not run twice is never sent on a connection
                        # already known dead: its failure would leave us unsure it ran
                        self._drop_connection()
                        conn = self._connection(deadline)
                    with gate:
                        if not begin:  # one statement in autocommit mode: atomic on its own
                            try:
                                return fn(Tx(conn, self.dialect))
                            except Exception as exc:
                                if not idempotent and self.dialect.is_disconnect(exc):
                                    self._drop_connection()
                                    raise StorageError(
                                        f"lost the connection to {self.dialect.describe()} during a change that "
                                        f"commits on its own; it may or may not have been applied: {exc}") from exc
                                raise
                        if write:
                            self.dialect.begin_write(conn, snapshot)
                        else:
                            self.dialect.begin_read(conn)
                        local.depth = 1
                        try:
                            result = fn(Tx(conn, self.dialect))
                            self.dialect.commit(conn)
                        except BaseException:
                            try:
                                self.dialect.rollback(conn)
                            except Exception:
                                self._drop_connection()  # in an unknown state: never back in the pool
                            raise
                        finally:
                            local.depth = 0
                    return result
                except Exception as exc:
                    if self.dialect.is_disconnect(exc):
                        self._drop_connection()  # never given back to the pool
                    raise
                finally:
                    self._give_back()  # between two attempts, and after the last, no connection is held
            except FederationError:
                raise
            except Exception as exc:
                retry = self.dialect.is_retryable(exc)
                lost = self.dialect.is_disconnect(exc)
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

    def write_statement(self, fn: Callable[[Tx], T], idempotent: bool = True) -> T:
        """Run *fn*, which executes ONE writing statement, in a single round trip where the engine allows.

        The statement runs in autocommit mode (atomic on its own: no BEGIN or
        COMMIT to send), still behind the engine's write gate and retried on
        contention.  *idempotent*: whether running it twice is harmless; if
        not, a connection lost while it ran is reported (a StorageError saying
        it may have been applied), never retried.
        """
        return self._run(fn, write=True, begin=not self.dialect.single_statement_autocommit,
                         idempotent=idempotent)

    def checkpoint(self) -> None:
        """The dialect's :meth:`~Dialect.checkpoint` on this thread's connection, outside any transaction and
        the write gate (long maintenance calls it between batches, so agents' commits do not pay for it)."""
        if not self._local.depth:
            try:
                self.dialect.checkpoint(self._connection())
            finally:
                self._give_back()

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
    def on_first_create(self, hook: Callable[[Tx], None]) -> None:
        """Run *hook* inside the transaction that creates the schema, unless a hook is already set
        (the first store of this database gives it)."""
        if self._on_create is None:
            self._on_create = hook

    def schema_version(self) -> int:
        def fn(tx: Tx) -> int:
            try:
                row = tx.fetchone("SELECT MAX(version) FROM schema_version")
            except Exception:
                return 0
            return int(row[0] or 0) if row else 0

        bypass, self._schema_bypass.on = getattr(self._schema_bypass, "on", False), True
        try:  # reading the version must not create the schema
            return self.read(fn)
        finally:
            self._schema_bypass.on = bypass

    def ensure_schema(self) -> None:
        if self._schema_ready:
            return
        with self._schema_lock:  # the other threads wait here until the schema is made (not "ready" before)
            if self._schema_ready:
                return
            self._schema_bypass.on = True  # let this thread's _run through while it migrates
            try:
                self.write(self._upgrade_schema)
            finally:
                self._schema_bypass.on = False
            self._schema_ready = True

    def _upgrade_schema(self, tx: Tx) -> None:
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
                added = schema.ADD_COLUMN.fullmatch(statement)
                if added:
                    table, column, definition = added.groups()
                    tx.execute(f"SELECT * FROM {table} LIMIT 0")
                    if column in {d[0] for d in tx._cur.description}:
                        continue
                    statement = f"ALTER TABLE {table} ADD COLUMN {column} {definition}"
                tx.execute(statement.format(id_pk=self.dialect.id_pk))
            tx.execute(
                "INSERT INTO schema_version (version, applied_at) VALUES (?, ?)",
                (version, datetime.now(timezone.utc).isoformat()),
            )
            log.info("schema_migrated", database=self.dialect.describe(), version=version)
        if created and self._on_create is not None:
            self._on_create(tx)


# ---------------------------------------------------------------------------
# one Database per target and process

_databases: dict[tuple, Database] = {}
_databases_lock = threading.Lock()


def dialect_for(settings: config.Settings) -> Dialect:
    """The dialect of the settings' database: the engine registered for ``FEDERATION_DB_URL``'s scheme
    (:data:`federation.stores.dialect.ENGINES`), else SQLite on ``FEDERATION_DB``."""
    if settings.db_url:
        try:
            return dialect_for_url(settings.db_url)  # the engine's module imported only when asked for
        except ImportError as exc:
            raise ConfigError(
                f"FEDERATION_DB_URL selects {settings.db_url.partition(':')[0]}, but its driver cannot be imported "
                f"({exc}): pip install 'federation[postgresql]'"
            ) from exc
    return SqliteDialect(settings.db_path)


def get_db(settings: config.Settings, on_create: Callable[[Tx], None] | None = None) -> Database:
    """The :class:`Database` of *settings*' target (one per process and target)."""
    s = settings
    key = (s.db_url or str(s.db_path),)
    db = _databases.get(key)
    if db is None:
        with _databases_lock:
            db = _databases.get(key)
            if db is None:
                db = _databases[key] = Database(dialect_for(s), on_create=on_create)
    return db


def database_exists(settings: config.Settings, *, ask_server: bool = False) -> bool:
    """Whether the federation's database was created, found out without creating it (read-only tools
    must not create one).

    SQLite: whether the file exists.  A server database (PostgreSQL) exists as soon as it is named;
    with *ask_server*, whether the federation's schema was created in it (one query, creating nothing),
    on either engine (a SQLite file without the schema is not a federation's database yet).
    """
    if not settings.db_url:
        if not settings.db_path.exists():
            return False
        return get_db(settings).schema_version() > 0 if ask_server else True
    return get_db(settings).schema_version() > 0 if ask_server else True


def forget_databases() -> None:
    """Close every connection of this process (tests, forks)."""
    with _databases_lock:
        for db in _databases.values():
            db.close()
        _databases.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)
