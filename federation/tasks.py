"""The task registry (CONTRACT "The task registry", docs/tasks.md): tasks that agents claim, do and complete.

A task has a title, a creator, optionally an assignee (only it may claim the task) and dependencies
(other tasks that must be done first).  ``claim_task`` leases the oldest task an agent may take; the
claimer completes it (with a result) or releases it while its lease holds; a lease that ends unfinished
makes the task open again, and the next claim has ``attempt + 1`` (at least once, as message leases).
"""

from __future__ import annotations

from typing import Any

from . import core
from .domain import clock as _clock
from .domain import validate as v
from .domain.entities import task_view
from .errors import NotFoundError, ValidationError

__all__ = ["create_task", "claim_task", "complete_task", "release_task", "get_task", "list_tasks",
           "TASK_STATUSES", "MAX_DEPENDENCIES", "MAX_TASK_LEASE_S"]

TASK_STATUSES = ("open", "claimed", "done")
#: the most tasks one task may depend on
MAX_DEPENDENCIES = 64
#: the longest lease a claim may ask for, in seconds (a day)
MAX_TASK_LEASE_S = 86400.0
#: the largest page list_tasks returns (``limit``); without a limit the list is whole
MAX_PAGE = 10_000


def create_task(creator: str, title: str, *, description: str | None = None, assignee: str | None = None,
                depends_on: Any = (), payload: Any = None) -> str:
    """Register a task, open; its id.  Every task of *depends_on* must exist (and form no cycle)."""
    v.agent(creator, "creator")
    v.text(title, "title")
    v.optional_text(description, "description", limit=v.MAX_SHORT_TEXT * 4)
    if assignee is not None:
        v.agent(assignee, "assignee")
    deps = [v.ident(d, "depends_on item") for d in
            v.string_list(list(depends_on) if isinstance(depends_on, tuple) else depends_on, "depends_on",
                          limit=MAX_DEPENDENCIES)]
    payload = v.json_value(payload, "payload")
    _check_dependencies(deps)
    stamp = _clock.now()
    task = {"id": _clock.new_id(), "title": title, "description": description, "creator": creator,
            "assignee": assignee, "depends_on": deps, "status": "open", "claimed_by": None, "lease_until": None,
            "attempt": 0, "result": None, "payload": payload, "created_at": stamp, "updated_at": stamp}
    core.save_task(task)
    return task["id"]


def _check_dependencies(deps: list[str]) -> None:
    """Every dependency exists, and none depends (through others) on a cycle: such a task could never run."""
    seen: dict[str, list[str]] = {}
    todo = list(deps)
    while todo:
        tid = todo.pop()
        if tid in seen:
            continue
        task = core.load_task(tid)
        if task is None:
            if tid in deps:
                raise ValidationError(f"depends_on names {tid!r}, which is not a task")
            seen[tid] = []  # pruned (only done tasks are): nothing beyond it
            continue
        seen[tid] = list(task.get("depends_on") or ())
        todo += seen[tid]
    cycle = _find_cycle(seen)
    if cycle:
        raise ValidationError(f"depends_on reaches a cycle of dependencies ({' -> '.join(cycle)}): "
                              "none of its tasks can ever be claimed")


def _find_cycle(graph: dict[str, list[str]]) -> list[str] | None:
    """A cycle of *graph* (``task -> its dependencies``) as a path back to its start, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    for start in sorted(graph):
        if state.get(start):
            continue
        path, stack = [start], [iter(graph.get(start, ()))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(graph.get(nxt, ())))
    return None


def claim_task(agent: str, lease: float = 300) -> dict | None:
    """Lease to *agent* for *lease* seconds the oldest open task it may take (assigned to it or to no one,
    every dependency done); the task (``status`` "claimed", ``attempt`` 1 the first time), or None."""
    v.agent(agent)
    if isinstance(lease, bool) or not isinstance(lease, (int, float)) or not 0 < lease <= MAX_TASK_LEASE_S:
        raise ValidationError(f"lease must be a number of seconds above 0 and at most {MAX_TASK_LEASE_S:.0f}, "
                              f"got {lease!r}")
    now, until = _clock.now_and_after(float(lease))
    return core.claim_task(agent, until, now)


def complete_task(agent: str, task_id: str, result: Any = None) -> dict:
    """Complete the task *agent* claimed, while its lease holds, with *result* (any JSON value); the task.

    Another agent's task, one not claimed, done, or whose lease ended: :class:`ConflictError`.
    """
    v.agent(agent)
    v.ident(task_id, "task_id")
    result = v.json_value(result, "result")
    return core.save_task_result(agent, task_id, result, _clock.now())


def release_task(agent: str, task_id: str) -> None:
    """Give back the task *agent* claimed (while its lease holds): open again for anyone."""
    v.agent(agent)
    v.ident(task_id, "task_id")
    core.save_task_release(agent, task_id, _clock.now())


def get_task(task_id: str) -> dict:
    """The task (a claim whose lease ended shows as open)."""
    v.ident(task_id, "task_id")
    task = core.load_task(task_id)
    if task is None:
        raise NotFoundError(f"task {task_id} does not exist")
    return task_view(task, _clock.now())


def list_tasks(status: str | None = None, assignee: str | None = None, limit: int | None = None,
               after: str | None = None) -> list[dict]:
    """Tasks (with *status*, assigned to *assignee*), oldest first; *limit* and *after* page as in
    :func:`federation.governance.list_polls`."""
    if status is not None:
        v.choice(status, "status", TASK_STATUSES)
    if assignee is not None:
        v.agent(assignee, "assignee")
    v.page_limit(limit, maximum=MAX_PAGE)
    v.cursor(after)
    now = _clock.now()
    return [task_view(t, now) for t in core.load_tasks_page(status, assignee, limit, after, now)]
