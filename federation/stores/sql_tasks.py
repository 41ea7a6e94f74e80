"""The task registry on the SQL store (issue 28): the ``Store`` operations of tasks, as a mixin of
:class:`federation.stores.sqlstore.SqlStore` (which gives ``self.db``).

A claim is one transaction: the oldest takeable tasks (open, or claimed with the lease over) are
looked at in order, and the first whose dependencies are all done is taken by one conditional
``UPDATE … WHERE status still allows it RETURNING``.  Two concurrent claimers may look at the same
task; only one ``UPDATE`` finds it still takeable (PostgreSQL re-checks the condition on the row's
newest version after waiting for its lock; SQLite's writers are serial), the other goes on to the next.
"""

from __future__ import annotations

from typing import Any

from . import sqltext as _sql
from .database import Tx
from .sql_base import SqlPart
from ..domain.entities import TASKS, check_task_holder
from ..errors import ValidationError

__all__ = ["SqlTasks"]

_COLS = _sql.columns(TASKS)
_task = TASKS.from_row
#: takeable at ``?`` (now): open, or claimed with the lease over
_TAKEABLE = "(status = 'open' OR (status = 'claimed' AND lease_until < ?))"
#: how many takeable tasks a claim looks at per round (those whose dependencies are not done are passed)
_ROUND = 64


class SqlTasks:
    """The task operations of the ``Store`` protocol, on ``self.db``."""

    db: Any

    def save_task(self, task: dict) -> None:
        """Create a task; one with the same id is a conflict."""
        self.db.write(lambda tx: SqlPart._insert_new(tx, TASKS, task, "task"))

    def load_task(self, task_id: str) -> dict | None:
        """The task *task_id* as stored (its last claim kept), or None."""
        row = self.db.fetchone(_sql.select(TASKS, "id = ?"), (task_id,))
        return None if row is None else _task(row)

    def claim_task(self, agent: str, lease_until: str, now: str, ids: list[str] | None = None) -> dict | None:
        """Lease to *agent* until *lease_until* the oldest task it may take at *now* (assigned to it or to
        no one, takeable, every dependency done); None when there is none.  *ids*: the shim mirroring the
        other side's claim takes exactly that task (or none), as that side decided."""
        def fn(tx: Tx) -> tuple | None:
            if ids is not None:
                return next((row for tid in ids for row in [_take(tx, tid, agent, lease_until, now)] if row), None)
            after: tuple = ()
            while True:
                where = f"{_TAKEABLE} AND (assignee IS NULL OR assignee = ?)"
                if after:
                    where += " AND (created_at, id) > (?, ?)"
                rows = tx.fetchall(_sql.select(TASKS, where, "id, depends_on, created_at")
                                   + " ORDER BY created_at, id LIMIT ?", (now, agent, *after, _ROUND))
                for tid, depends_on, _ in rows:
                    if _dependencies_done(tx, TASKS.field("depends_on").decode(depends_on)):
                        row = _take(tx, tid, agent, lease_until, now)
                        if row is not None:
                            return row
                if len(rows) < _ROUND:
                    return None
                after = tuple(rows[-1][2:]) + (rows[-1][0],)

        row = self.db.write(fn)
        return None if row is None else _task(row)

    def save_task_result(self, agent: str, task_id: str, result: Any, now: str) -> dict:
        """Complete the task *agent* holds (its lease not over at *now*) with *result*; the task done."""
        def fn(tx: Tx) -> tuple:
            check_task_holder(self._locked_task(tx, task_id), task_id, agent, now)
            return tx.fetchone(
                f"UPDATE tasks SET status = 'done', result = ?, lease_until = NULL, updated_at = ? WHERE id = ? "
                f"RETURNING {_COLS}", (TASKS.field("result").encode(result), now, task_id))

        return _task(self.db.write(fn))

    def save_task_release(self, agent: str, task_id: str, now: str) -> None:
        """Give back the task *agent* holds (its lease not over at *now*): open again."""
        def fn(tx: Tx) -> None:
            check_task_holder(self._locked_task(tx, task_id), task_id, agent, now)
            tx.execute("UPDATE tasks SET status = 'open', claimed_by = NULL, lease_until = NULL, updated_at = ? "
                       "WHERE id = ?", (now, task_id))

        self.db.write(fn)

    @staticmethod
    def _locked_task(tx: Tx, task_id: str) -> dict | None:
        row = tx.fetchone(f"{_sql.select(TASKS, 'id = ?')}{tx.dialect.for_update}", (task_id,))
        return None if row is None else _task(row)

    def load_tasks_page(self, status: str | None = None, assignee: str | None = None, limit: int | None = None,
                        after: str | None = None, now: str = "") -> list[dict]:
        """Tasks oldest first (with *status* as seen at *now*, assigned to *assignee*), after the task
        *after*, at most *limit*."""
        def fn(tx: Tx) -> list[tuple]:
            where, params = _status_where(status, now)
            if assignee is not None:
                where.append("assignee = ?")
                params.append(assignee)
            if after is not None:
                row = tx.fetchone("SELECT created_at, id FROM tasks WHERE id = ?", (after,))
                if row is None:
                    raise ValidationError(f"after {after!r} is not the id of a task: page from the start (after=None)")
                where.append("(created_at, id) > (?, ?)")
                params += list(row)
            sql = _sql.select(TASKS, " AND ".join(where)) + " ORDER BY created_at, id"
            if limit is not None:
                sql += " LIMIT ?"
                params.append(limit)
            return tx.fetchall(sql, params)

        return [_task(r) for r in self.db.read(fn)]


def _status_where(status: str | None, now: str) -> tuple[list[str], list]:
    """The condition on the stored rows of the tasks with *status* as callers see it at *now*."""
    if status is None:
        return [], []
    if status == "open":
        return [_TAKEABLE], [now]
    if status == "claimed":
        return ["status = 'claimed' AND lease_until >= ?"], [now]
    return ["status = ?"], [status]


def _dependencies_done(tx: Tx, depends_on: list[str]) -> bool:
    """Every task of *depends_on* is done (one that no longer exists was pruned, which only removes done ones)."""
    if not depends_on:
        return True
    marks = ", ".join("?" for _ in depends_on)
    row = tx.fetchone(f"SELECT COUNT(*) FROM tasks WHERE id IN ({marks}) AND status <> 'done'", depends_on)
    return int(row[0]) == 0


def _take(tx: Tx, task_id: str, agent: str, lease_until: str, now: str) -> tuple | None:
    """Take *task_id* for *agent* if it is still takeable: the claimed row, or None."""
    return tx.fetchone(
        f"UPDATE tasks SET status = 'claimed', claimed_by = ?, lease_until = ?, attempt = attempt + 1, updated_at = ? "
        f"WHERE id = ? AND {_TAKEABLE} AND (assignee IS NULL OR assignee = ?) RETURNING {_COLS}",
        (agent, lease_until, now, task_id, now, agent))
