"""The database façade: :class:`Database` and ``get_db()``.

One :class:`Database` per target (SQLite file or PostgreSQL URL) per process,
one connection per thread.  The schema is created on first use and upgraded
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
import weakref
import time
from typing import Any, Callable, Sequence, TypeVar

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


class _ThreadEnd:
    """Lives exactly as long as one thread's connection slot: its finalizer closes that connection."""

    __slots__ = ("__weakref__",)


def _close_quietly(conn: Any, pid: int) -> None:
    if pid == os.getpid():  # never a forked parent's connection
        with contextlib.suppress(Exception):
            conn.close()


class Database:
    """One database target: connections, schema, transactions with retries."""

    def __init__(self, dialect: Dialect, on_create: Callable[[Tx], None] | None = None):
        self.dialect = dialect
        self._local = threading.local()
        self._on_create = on_create
        self._schema_ready = False
        self._schema_lock = threading.Lock()
        self._schema_bypass = threading.local()  # this thread is making (or reading) the schema: no check

    # -- connections --------------------------------------------------------
    def _connection(self, deadline: float | None = None) -> Any:
        local = self._local
        conn = getattr(local, "conn", None)
        if conn is None or local.pid != os.getpid():
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
            local.conn, local.pid, local.depth = conn, os.getpid(), 0
            # closed when this thread ends, not whenever the garbage collector gets to it: a server's
            # worker threads come and go, and each left a connection (and its descriptors) behind
            local.end = _ThreadEnd()
            local.closer = weakref.finalize(local.end, _close_quietly, conn, os.getpid())
        return conn

    def _drop_connection(self) -> None:
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        closer = getattr(self._local, "closer", None)
        if closer is not None:
            closer.detach()  # closed here (or deliberately left to a forked parent), not at thread end
        # A forked child inherits the parent's connection: closing it there would
        # end the parent's session (PostgreSQL) or break its locks (SQLite).
        if conn is not None and getattr(self._local, "pid", None) == os.getpid():
            with contextlib.suppress(Exception):
                conn.close()

    def close(self) -> None:
        self._drop_connection()

    # -- transactions -------------------------------------------------------
    def _run(self, fn: Callable[[Tx], T], write: bool, snapshot: bool = False, begin: bool = True,
             idempotent: bool = True) -> T:
        if not self._schema_ready and not getattr(self._schema_bypass, "on", False):
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
        if not getattr(self._local, "depth", 0):
            self.dialect.checkpoint(self._connection())

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
