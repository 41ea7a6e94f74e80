"""What every part of the SQL store shares: the database it works on, and where a page starts."""

from __future__ import annotations

from .database import Database, Tx
from .files import Tree
from ..errors import ValidationError

__all__ = ["SqlPart"]


class SqlPart:
    """A concern of :class:`~federation.stores.sqlstore.SqlStore` (its messages, polls, ...): one
    ``Database`` and the legacy tree it serves, given by the store."""

    db: Database
    tree: Tree

    @staticmethod
    def _position(tx: Tx, table: str, after: str | None, what: str) -> tuple | None:
        """``(created_at, id)`` of the record *after* (the last of the previous page)."""
        if after is None:
            return None
        row = tx.fetchone(f"SELECT created_at, id FROM {table} WHERE id = ?", (after,))
        if row is None:
            raise ValidationError(f"after {after!r} is not the id of a {what}: page from the start (after=None)")
        return row
