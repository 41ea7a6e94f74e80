"""The SQL text that is built from entity descriptions, all in one place.

Statements are written with ``?`` placeholders (a dialect translates them).
Writes whose SQL carries concurrency meaning (a vote's ``FOR SHARE``, the
inbox claim's ``UPDATE … RETURNING``, the expertise lock) are written by hand
in :mod:`federation.stores.sqlstore`, not here.
"""

from __future__ import annotations

import functools

from ..domain.entities import Entity

__all__ = ["columns", "select", "select_file_side", "select_documents", "insert", "upsert", "where_key", "delete_by_key", "delete_owner",
           "mark_read"]


def columns(entity: Entity) -> str:
    """The entity's columns, comma-separated, in row order."""
    return ", ".join(entity.columns)


@functools.lru_cache(maxsize=None)
def select(entity: Entity, where: str = "", what: str = "") -> str:
    """SELECT *what* (default: the entity's columns) FROM its table [WHERE *where*]."""
    return f"SELECT {what or columns(entity)} FROM {entity.table}" + (f" WHERE {where}" if where else "")


def select_file_side(entity: Entity, what: str = "") -> str:
    """SELECT from the rows that have a file counterpart (unread messages; every row elsewhere)."""
    return select(entity, entity.db_filter, what)


def select_documents(entity: Entity, n: int) -> str:
    """SELECT the file-side rows of *n* legacy documents: those whose first key column is one of *n* ``?``."""
    where = f"{entity.key_columns[0]} IN ({', '.join('?' * n)})"
    return select(entity, f"{where} AND {entity.db_filter}" if entity.db_filter else where)


@functools.lru_cache(maxsize=None)
def insert(entity: Entity, conflict: str = "", extra: bool = False) -> str:
    """INSERT one row (with the insert-only columns when *extra*), ``ON CONFLICT (key) conflict`` if given."""
    cols = entity.columns + (tuple(name for name, _ in entity.extra) if extra else ())
    sql = f"INSERT INTO {entity.table} ({', '.join(cols)}) VALUES ({', '.join('?' for _ in cols)})"
    return sql + (f" ON CONFLICT ({', '.join(entity.key_columns)}) {conflict}" if conflict else "")


@functools.lru_cache(maxsize=None)
def upsert(entity: Entity, extra: bool = False, reopen: bool = False) -> str:
    """INSERT one row, or on a key conflict set every non-key column to the new row's.

    reopen: also make the row unread again (``read_at = NULL``), as its file says it is.
    """
    rest = entity.columns[entity.key:]
    sets = [f"{c} = excluded.{c}" for c in rest] + (["read_at = NULL"] if reopen else [])
    return insert(entity, "DO UPDATE SET " + ", ".join(sets), extra)


def where_key(entity: Entity) -> str:
    return " AND ".join(f"{c} = ?" for c in entity.key_columns)


def delete_by_key(entity: Entity) -> str:
    return f"DELETE FROM {entity.table} WHERE {where_key(entity)}"


def delete_owner(entity: Entity) -> str:
    """DELETE every row of one owner (the first key column): a replace-set entity's whole set."""
    return f"DELETE FROM {entity.table} WHERE {entity.key_columns[0]} = ?"


def mark_read(entity: Entity) -> str:
    """Mark one unread row read (``read_at = ?``): what a legacy claim does by deleting the file."""
    return f"UPDATE {entity.table} SET read_at = ? WHERE {where_key(entity)} AND {entity.db_filter}"
