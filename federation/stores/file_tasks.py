"""The task registry on the legacy file tree (issue 28): ``shared/tasks/{id}.json``, one task per file.

The bodies of :mod:`federation.core`'s task functions (``core`` binds them to its tree; the shim wraps
``core``'s names).  Every write holds the one lock of the task documents (``entities.TASKS_LOCK``), which
the shim also holds across both sides of a dual-phase task write: a claim reads every task, picks the
oldest one the agent may take and writes it back under that lock, so no two claimers take one task.
A task file that cannot be read is skipped by the scans (logged once) and refused by a direct read.
"""

from __future__ import annotations

from typing import Any

from ..domain.entities import TASKS, TASKS_LOCK, check_task_holder, task_takeable, task_view
from ..domain.layout import is_document_name, stem
from ..errors import ConflictError, CorruptFileError, ValidationError
from .file_reads import skip as _skip
from .files import Tree, atomic_write_json, entry_kind, list_dir, locked, read_json

__all__ = ["save_task", "load_task", "claim_task", "save_task_result", "save_task_release", "load_tasks_page"]

def _record(task_id: str, data: dict) -> dict:
    return TASKS.record(data, fallback={"id": task_id})


def load_task(t: Tree, task_id: str) -> dict | None:
    """The task *task_id* as its file holds it (its last claim kept), or None."""
    data = read_json(t.task_file(task_id), root=t.root)
    return None if data is None else _record(task_id, data)


def _all(t: Tree) -> list[dict]:
    """Every readable task, oldest first (an unreadable file is skipped and logged once)."""
    out = []
    try:
        names = list_dir(t.tasks_dir, root=t.root)
    except CorruptFileError as exc:  # shared/ or tasks/ is a link or a file: nothing is read through it
        _skip(str(exc.path), exc.reason)
        return []
    for name in names:
        if not is_document_name(name):
            continue
        try:
            task = load_task(t, stem(name))
        except (CorruptFileError, ValidationError) as exc:
            _skip(str(t.tasks_dir / name), getattr(exc, "reason", str(exc)))
            continue
        if task is not None:
            out.append(task)
    out.sort(key=lambda r: (str(r.get("created_at") or ""), str(r["id"])))
    return out


def _write(t: Tree, task: dict) -> None:
    atomic_write_json(t.task_file(task["id"]), {f: task.get(f) for f in TASKS.columns}, root=t.root)


def save_task(t: Tree, task: dict) -> None:
    """Create a task; one with the same id is a conflict."""
    with locked(t, TASKS_LOCK):
        if entry_kind(t.task_file(task["id"]), root=t.root) is not None:
            raise ConflictError(f"task {task['id']} already exists")
        _write(t, task)


def claim_task(t: Tree, agent: str, lease_until: str, now: str, ids: list[str] | None = None) -> dict | None:
    """Lease to *agent* until *lease_until* the oldest task it may take at *now* (assigned to it or to no one,
    takeable, every dependency done); None when there is none.  *ids*: exactly that task (the shim's mirror)."""
    with locked(t, TASKS_LOCK):
        tasks = _all(t)
        status = {task["id"]: task.get("status") for task in tasks}
        for task in tasks:
            if ids is not None:
                if task["id"] not in ids:
                    continue
            elif any(status.get(dep, "done") != "done" for dep in task.get("depends_on") or ()):
                continue  # a dependency not done (one no longer there was pruned: done)
            if task.get("assignee") not in (None, agent) or not task_takeable(task, now):
                continue
            task = {**task, "status": "claimed", "claimed_by": agent, "lease_until": lease_until,
                    "attempt": int(task.get("attempt") or 0) + 1, "updated_at": now}
            _write(t, task)
            return task
    return None


def _holder_update(t: Tree, agent: str, task_id: str, now: str, change: dict) -> dict:
    with locked(t, TASKS_LOCK):
        task = load_task(t, task_id)
        check_task_holder(task, task_id, agent, now)
        task = {**task, **change, "updated_at": now}
        _write(t, task)
        return task


def save_task_result(t: Tree, agent: str, task_id: str, result: Any, now: str) -> dict:
    """Complete the task *agent* holds (its lease not over at *now*) with *result*; the task done."""
    return _holder_update(t, agent, task_id, now, {"status": "done", "result": result, "lease_until": None})


def save_task_release(t: Tree, agent: str, task_id: str, now: str) -> None:
    """Give back the task *agent* holds (its lease not over at *now*): open again."""
    _holder_update(t, agent, task_id, now, {"status": "open", "claimed_by": None, "lease_until": None})


def load_tasks_page(t: Tree, status: str | None = None, assignee: str | None = None, limit: int | None = None,
                    after: str | None = None, now: str = "") -> list[dict]:
    """Tasks oldest first (with *status* as seen at *now*, assigned to *assignee*), after the task *after*,
    at most *limit*."""
    tasks = _all(t)
    if after is not None:
        cut = next((i for i, task in enumerate(tasks) if task["id"] == after), None)
        if cut is None:
            raise ValidationError(f"after {after!r} is not the id of a task: page from the start (after=None)")
        tasks = tasks[cut + 1:]
    chosen = [task for task in tasks if (status is None or task_view(task, now)["status"] == status)
              and (assignee is None or task.get("assignee") == assignee)]
    return chosen if limit is None else chosen[:limit]
