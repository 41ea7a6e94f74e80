"""What every part of the SQL store shares: the database it works on, and where a page starts."""

from __future__ import annotations

from . import sqltext as _sql
from .database import Database, Tx
from .files import Tree
from ..domain.entities import Entity
from ..errors import ConflictError, ValidationError

__all__ = ["SqlPart"]


class SqlPart:
    """A concern of :class:`~federation.stores.sqlstore.SqlStore` (its messages, polls, ...): one
    ``Database`` and the legacy tree it serves, given by the store."""

    db: Database
    tree: Tree

    @staticmethod
    def _insert_new(tx: Tx, entity: Entity, record: dict, what: str) -> None:
        """Insert *record* of *entity*; one with the same id already stored is a ``ConflictError``."""
        if tx.fetchone(f"SELECT 1 FROM {entity.table} WHERE id = ?", (record["id"],)):
            raise ConflictError(f"{what} {record['id']} already exists")
        tx.execute(_sql.insert(entity), entity.row_of(record))

    @staticmethod
    def _position(tx: Tx, table: str, after: str | None, what: str) -> tuple | None:
        """``(created_at, id)`` of the record *after* (the last of the previous page)."""
        if after is None:
            return None
        row = tx.fetchone(f"SELECT created_at, id FROM {table} WHERE id = ?", (after,))
        if row is None:
            raise ValidationError(f"after {after!r} is not the id of a {what}: page from the start (after=None)")
        return row
