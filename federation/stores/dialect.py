"""What every database engine provides: :class:`Dialect`, and :class:`Tx`, what a transaction function receives.

The SQL text is shared by the engines (``?`` placeholders); a dialect holds
the differences (placeholders, how a write transaction starts, row locks,
the auto-increment key, which errors are worth a retry, how a receive leases,
how a waiting receiver is woken, a bulk load); the store's SQL never asks which
engine it runs on.  One module per engine subclasses it:
:mod:`federation.stores.sqlite`, :mod:`federation.stores.postgres`; a server
engine is registered by its URL scheme in :data:`ENGINES` (imported only when a
URL names it: its driver is an optional dependency).
"""

from __future__ import annotations

import contextlib
import importlib
from typing import Any, Iterable, Iterator, Sequence

from ..errors import ConfigError

__all__ = ["Tx", "Dialect", "ENGINES", "register_engine", "dialect_for_url"]


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


class Dialect:
    """What differs between database engines."""

    name = "abstract"
    id_pk = "INTEGER PRIMARY KEY"
    single_statement_autocommit = False  # may one statement run without BEGIN/COMMIT?
    #: Does one write transaction hold every other writer back (SQLite), or only the rows it
    #: touches (PostgreSQL)?  Long maintenance paces itself by the writer's time only where it does.
    one_writer = False
    for_share = ""  # row lock taken when a write reads a row it depends on
    for_update = ""
    #: A condition true when the JSON array text *options* holds the text parameter ``?``.
    json_array_has = "EXISTS (SELECT 1 FROM json_each({options}) WHERE json_each.value = ?)"
    #: A receive's lease of the messages ``{pick}`` chooses (``SELECT id AS picked_id …``): ``{lease}`` (the SET
    #: list: attempt + 1 and the lease; a row delivered max attempts already keeps both), returning
    #: ``{returning}`` (the columns, ``attempt``, ``lease_until``); parameters: :meth:`lease_params`.  Here for
    #: engines whose writers are serial (the subquery is evaluated once; the conditions re-checked).
    lease_sql = "UPDATE messages SET {lease} WHERE id IN ({pick}) AND {deliverable} RETURNING {returning}"
    #: Does :attr:`lease_sql`'s SET list also mark those rows dead (the SET list given then says so)?  Else the
    #: store marks them by a second statement in the same transaction.
    lease_marks_dead = False
    #: One statement that sends one message: its row (``{columns}`` VALUES ``{marks}``, the parameters), its
    #: history entry and its recipient's wake-up; a row back when it wrote, none when the id was there already
    #: (so it may be sent again after a lost reply).  None: the store writes them in one transaction.
    send_sql: str | None = None
    #: One statement that acknowledges an array of ids (parameters: the ids as one list, the recipient,
    #: read_at), returning ``{columns}``.  None: ``IN (?, …)`` lists, 500 ids a statement.
    ack_sql: str | None = None

    def lease_params(self, pick: tuple, lease: tuple, now: str) -> tuple:
        """The parameters of :attr:`lease_sql`, given the pick's (*pick*) and the SET list's (*lease*)."""
        return (*lease, *pick, now)

    def text_array(self, values: Iterable[str]) -> Any:
        """*values* as the parameter of a ``CAST(? AS text[])`` (an engine with arrays)."""
        return list(values)

    def notify(self, tx: "Tx", recipients: Iterable[str]) -> None:
        """Wake the waiting receives of *recipients* when *tx* commits (a no-op where waiters poll)."""

    def watcher(self, agent: str) -> Any:
        """The cheapest check whether *agent*'s inbox may have changed (a ``stores.wait.Watcher``); None: poll."""
        return None

    @contextlib.contextmanager
    def bulk_load(self, db: Any) -> Iterator[None]:
        """Around a migration's bulk import into *db* (a ``Database``): whatever makes it cheaper."""
        yield

    def sql(self, text: str) -> str:
        return text

    def connect(self, busy_deadline_s: float, time_left: float | None = None) -> Any:
        """A new connection; a lock wait longer than *busy_deadline_s* must fail, not hang;
        *time_left*: the seconds the calling operation has left (a connection attempt stops by then)."""
        raise NotImplementedError

    def begin_write(self, conn: Any, snapshot: bool = False) -> None:
        """Start a write transaction; *snapshot*: one that reads a document and writes it back."""
        raise NotImplementedError

    def begin_read(self, conn: Any) -> None:
        raise NotImplementedError

    def checkpoint(self, conn: Any) -> None:
        """Fold what was written so far into the database file without holding writers back (a no-op where
        the engine needs no help: SQLite's WAL is folded in by the commit that crosses its size limit,
        while that writer holds every other one back)."""

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

    def is_stale(self, conn: Any) -> bool:
        """True when an idle connection is known to be dead already (e.g. the server ended it)."""
        return False

    @contextlib.contextmanager
    def write_gate(self):
        yield

    def describe(self) -> str:
        return self.name


#: URL scheme -> the module of its engine, which names its dialect class ``DIALECT`` (built from the URL).
#: SQLite, the default, is given a file path instead of a URL.
ENGINES: dict[str, str] = {
    "postgresql": "federation.stores.postgres",
    "postgres": "federation.stores.postgres",
}


def register_engine(scheme: str, module: str) -> None:
    """Serve URLs ``{scheme}://…`` by the dialect of *module* (imported when such a URL is used)."""
    ENGINES[scheme] = module


def dialect_for_url(url: str) -> Dialect:
    """The dialect of the engine registered for *url*'s scheme; ImportError when its driver is missing,
    ConfigError when no engine is registered for it."""
    scheme = url.partition("://")[0]
    module = ENGINES.get(scheme)
    if module is None:
        raise ConfigError(f"no database engine is registered for {scheme}:// URLs (known: {', '.join(sorted(ENGINES))})")
    return importlib.import_module(module).DIALECT(url)
