"""What every database engine provides: :class:`Dialect`, and :class:`Tx`, what a transaction function receives.

The SQL text is shared by the engines (``?`` placeholders); a dialect holds
the few differences (placeholders, how a write transaction starts, row locks,
the auto-increment key, which errors are worth a retry).  One module per
engine subclasses it: :mod:`federation.stores.sqlite`, :mod:`federation.stores.postgres`.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterable, Sequence

__all__ = ["Tx", "Dialect"]


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
    for_share = ""  # row lock taken when a write reads a row it depends on
    for_update = ""
    #: May a statement's WITH hold INSERT/UPDATE (several writes, one statement, one round trip)?
    writable_cte = False
    #: May one ``?`` stand for a list (``id = ANY(?)``)?  Else a list is spelled ``IN (?, ?, ...)``.
    array_params = False
    #: A condition true when the JSON array text *options* holds the text parameter ``?``.
    json_array_has = "EXISTS (SELECT 1 FROM json_each({options}) WHERE json_each.value = ?)"

    def sql(self, text: str) -> str:
        return text

    def connect(self, busy_deadline_s: float) -> Any:
        """A new connection; a lock wait longer than *busy_deadline_s* must fail, not hang."""
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

    def is_stale(self, conn: Any) -> bool:
        """True when an idle connection is known to be dead already (e.g. the server ended it)."""
        return False

    @contextlib.contextmanager
    def write_gate(self):
        yield

    def describe(self) -> str:
        return self.name
