"""The SQL store: the same functions as :mod:`federation.core`, on the schema.

Both implement the ``Store`` protocol (:mod:`federation.stores.protocol`): every method has the
name and signature of its ``core`` counterpart and
returns the same legacy shapes, so the shim can route a call to either side
by name.  Every write is one transaction that checks what it depends on
(poll open, option valid, session exists) and changes only its own rows, so
concurrent writers never erase each other.

One class over one :class:`~federation.stores.database.Database`, written by concern: messages and
their delivery (:mod:`.sql_messages`), history (:mod:`.sql_history`), nodes (:mod:`.sql_nodes`),
polls (:mod:`.sql_polls`), sessions (:mod:`.sql_sessions`); this module holds its life cycle.
What differs between engines is the database's dialect.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Callable, TypeVar

from ..domain import clock as _clock
from . import sqltext as _sql
from .. import config
from .files import Tree, has_legacy_data
from .database import Database, Tx, get_db
from ..domain.entities import ALL
from ..errors import BackfillRequiredError
from .sql_history import HistorySql
from .sql_messages import MessagesSql
from .sql_nodes import NodesSql
from .sql_polls import PollsSql
from .sql_sessions import SessionsSql
from .sql_tasks import SqlTasks

__all__ = ["SqlStore", "get_store", "forget_stores"]

T = TypeVar("T")


class SqlStore(MessagesSql, HistorySql, NodesSql, PollsSql, SessionsSql, SqlTasks):
    """The federation's state in a SQL database (SQLite or PostgreSQL); a ``Store``.  The task registry's
    operations are :class:`~federation.stores.sql_tasks.SqlTasks`'."""

    def __init__(self, db: Database, root: Path):
        self.db = db
        self.tree = Tree(root)
        db.on_first_create(self._on_create)
        self._backfill_ok = False
        self._root_made = False

    def ensure_root(self) -> None:
        """Create the federation's root when it does not exist (once per store).

        A process that writes only the database (phase 4) still makes the root, where the control plane
        lives (the flag, the fleet's announcements): `doctor`, `status` and `rollout status` then operate
        a federation that has no legacy files.  Never again after the first call: a root removed later
        (a test's temporary folder, an unmounted disk) is not recreated by this.
        """
        if not self._root_made:
            os.makedirs(self.tree.root, exist_ok=True)
            self._root_made = True

    # -- lifecycle ------------------------------------------------------------
    def _on_create(self, tx: Tx) -> None:
        now = _clock.now()
        tx.execute("INSERT INTO federation_meta (key, value) VALUES ('created_at', ?)", (now,))
        if not has_legacy_data(self.tree):
            # a new federation: nothing to backfill, now or after its dual-writes create files
            tx.execute("INSERT INTO federation_meta (key, value) VALUES ('backfilled_at', ?)", (now,))
            tx.execute("INSERT INTO federation_meta (key, value) VALUES ('backfill_source', 'empty')")

    def meta(self, key: str) -> str | None:
        row = self.db.fetchone("SELECT value FROM federation_meta WHERE key = ?", (key,))
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        self.db.write(lambda tx: tx.execute(
            "INSERT INTO federation_meta (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value", (key, value)))

    def mark_backfilled(self, source: str = "migration") -> None:
        self.set_meta("backfilled_at", _clock.now())
        self.set_meta("backfill_source", source)

    def mark_caught_up(self) -> None:
        """Record that the database now holds every record of the files (a clean migrate or full sync --to db):
        phase 2's evidence for the step to 3 is counted from here (issue 29)."""
        self.set_meta("caught_up_at", _clock.now())

    def ensure_backfilled(self) -> None:
        """Refuse (phases 3-4) to serve a database that never received the legacy files."""
        if self._backfill_ok:
            return
        if self.meta("backfilled_at") is None and has_legacy_data(self.tree):
            raise BackfillRequiredError(
                f"the database {self.db.dialect.describe()} was never backfilled from the legacy files "
                f"under {self.tree.root}; serving reads from it would show agents an empty federation. "
                "`federation rollout set 1` serves the files meanwhile (every unpinned process follows it "
                "within seconds); then run `federation migrate`. A process pinned to phase 3 or 4 by its "
                "environment (FEDERATION_PHASE) needs that pin removed or set to 2 until the migration is done."
            )
        self._backfill_ok = True

    def atomic(self, fn: Callable[[], T]) -> T:
        """Run *fn* (which calls methods of this store) in one write transaction."""
        return self.db.write(lambda tx: fn(), snapshot=True)

    def counts(self) -> dict[str, int]:
        def fn(tx: Tx) -> dict[str, int]:
            return {e.table: int(tx.fetchone(_sql.select(e, what="COUNT(*)"))[0]) for e in ALL}

        return self.db.read(fn)


_stores: dict[tuple, SqlStore] = {}
_last: tuple | None = None
_stores_lock = threading.Lock()


def get_store(settings: config.Settings) -> SqlStore:
    """The SQL store of *settings*' database and root (one per process and pair)."""
    global _last
    s = settings
    last = _last
    if last is not None and last[0] is s:  # the hot path: same settings object as the last call
        return last[1]
    key = (s.db_url or str(s.db_path), str(s.root))
    store = _stores.get(key)
    if store is None:
        with _stores_lock:
            store = _stores.get(key)
            if store is None:
                store = _stores[key] = SqlStore(get_db(s), s.root)
    _last = (s, store)
    return store


def forget_stores() -> None:
    from .database import forget_databases

    global _last
    with _stores_lock:
        _stores.clear()
        _last = None
    forget_databases()

