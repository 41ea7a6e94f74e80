"""The task registry's tools (CONTRACT "The task registry")."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field

from ... import tasks
from ...domain import validate as v
from ._params import TaskId, TaskStatus, MCP_PAGE, PageLimit, _page, _tool, _KIB, _CONTENT_LIMIT, _SHORT_LIMIT


class TaskTools:
    """The task registry's tools (CONTRACT "The task registry"), acting as ``self.agent``."""

    agent: str

    # -- tasks (CONTRACT "The task registry") -------------------------------------------------------

    @_tool()
    def create_task(
        self,
        title: Annotated[str, Field(description=f"What is to be done, in short (non-empty, {_SHORT_LIMIT}).")],
        description: Annotated[str | None, Field(description=(
            f"The details (at most {4 * v.MAX_SHORT_TEXT // _KIB} KiB); optional."))] = None,
        assignee: Annotated[str | None, Field(description=(
            "The only agent that may claim it; omit it to let any agent claim it."))] = None,
        depends_on: Annotated[list[str], Field(description=(
            f"Ids of tasks that must be done before this one can be claimed (at most {tasks.MAX_DEPENDENCIES})."))
        ] = [],  # noqa: B006 (pydantic copies defaults)
        payload: Annotated[Any, Field(description=(
            f"Any JSON value the claimer needs ({_CONTENT_LIMIT} as JSON); optional."))] = None,
    ) -> dict[str, Any]:
        """Register a task that you create; it starts "open". Returns {"task_id": str}."""
        return {"task_id": tasks.create_task(self.agent, title, description=description, assignee=assignee,
                                             depends_on=depends_on, payload=payload)}

    @_tool()
    def claim_task(
        self,
        lease: Annotated[float, Field(gt=0, le=tasks.MAX_TASK_LEASE_S, description=(
            "Seconds the task stays yours; not completed or released by then, it is open again for anyone."))
        ] = 300,
    ) -> dict[str, Any]:
        """Take the oldest open task you may do (assigned to you or to no one, every dependency done).

        Returns {"task": {...} or null}: the task with "status": "claimed", "lease_until" and "attempt"
        (1 the first time it is claimed). Finish it with complete_task, or give it back with release_task.
        """
        return {"task": tasks.claim_task(self.agent, lease)}

    @_tool()
    def complete_task(
        self,
        task_id: TaskId,
        result: Annotated[Any, Field(description=f"Any JSON value: what came of it ({_CONTENT_LIMIT}).")] = None,
    ) -> dict[str, Any]:
        """Mark a task you claimed done, while your lease holds, with its result.

        Fails on a task you did not claim, or whose lease ended. Returns {"task": {...}}.
        """
        return {"task": tasks.complete_task(self.agent, task_id, result)}

    @_tool(idempotent=True)
    def release_task(self, task_id: TaskId) -> dict[str, Any]:
        """Give back a task you claimed (while your lease holds): open again for anyone. Returns {"ok": true}."""
        tasks.release_task(self.agent, task_id)
        return {"ok": True}

    @_tool(read_only=True)
    def get_task(self, task_id: TaskId) -> dict[str, Any]:
        """Read a task.

        Returns {"task": {"id", "title", "description", "creator", "assignee", "depends_on", "status":
        "open"|"claimed"|"done", "claimed_by", "lease_until", "attempt", "result", "payload", "created_at",
        "updated_at"}}.
        """
        return {"task": tasks.get_task(task_id)}

    @_tool(read_only=True)
    def list_tasks(
        self,
        status: Annotated[TaskStatus | None, Field(description="Only tasks with this status; omit for all.")] = None,
        assignee: Annotated[str | None, Field(description="Only tasks assigned to this agent.")] = None,
        limit: PageLimit = MCP_PAGE,
        after: Annotated[str | None, Field(description=(
            "A \"next\" cursor from an earlier list_tasks call (the id of its last task): the tasks after it. "
            "Omit it for the first page."))] = None,
    ) -> dict[str, Any]:
        """Tasks, oldest first, a page at a time.

        Returns {"tasks": [...], "next": cursor or null}, each shaped as in get_task;
        "next" is set when more tasks remain: pass it as `after` (with the same filters).
        """
        return _page("tasks", tasks.list_tasks(status, assignee, limit + 1, after), limit)
