"""What every group of MCP tools shares: the parameter types (the JSON schema and descriptions the model
reads), the page size and shape of the list tools, and the mark that makes a method a tool."""

from __future__ import annotations

from typing import Annotated, Any, Callable, Literal

from mcp_types import ToolAnnotations
from pydantic import Field

from ... import config, governance, tasks
from ...domain import validate as v

_KIB = 1024
_CONTENT_LIMIT = f"at most {config.MAX_CONTENT_BYTES // _KIB} KiB of UTF-8"
_SHORT_LIMIT = f"at most {v.MAX_SHORT_TEXT // _KIB} KiB"

# Parameter types: the JSON schema (and its descriptions) the model reads.
AgentName = Annotated[str, Field(description=(
    "An agent name: 1-64 characters from A-Z a-z 0-9 _ . - starting with a letter or digit, without '..'."))]
OtherAgent = Annotated[str | None, Field(description=(
    "The agent to read (any agent's public state may be read); omit it to read your own."))]
PollId = Annotated[str, Field(description="A poll id, as returned by create_poll or list_polls.")]
SessionId = Annotated[str, Field(description="A session id, as returned by create_session or list_sessions.")]
ArtifactType = Annotated[str, Field(description=(
    "The artifact's kind within the session, e.g. 'design', 'plan', 'code' (non-empty, at most 256 bytes). "
    "A session holds one artifact per type."))]
ReviewStatus = Literal[v.REVIEW_STATUSES]  # type: ignore[valid-type]
PollStatus = Literal[governance.POLL_STATUSES]  # type: ignore[valid-type]
TaskId = Annotated[str, Field(description="A task id, as returned by create_task, claim_task or list_tasks.")]
TaskStatus = Literal[tasks.TASK_STATUSES]  # type: ignore[valid-type]

IdempotencyKey = Annotated[str | None, Field(description=(
    "Any text you choose (at most 256 bytes) naming this send: the same key again returns the first "
    "send's result and sends nothing. Use one when you might retry."))]
LeaseSeconds = Annotated[float, Field(gt=0, le=86400, description=(
    "Seconds the messages stay yours; not acknowledged by then, they are delivered again."))]

#: The most records one call of a list tool returns; a "next" cursor asks for the following page.
MCP_PAGE = 100
PageLimit = Annotated[int, Field(ge=1, le=MCP_PAGE, description=(
    f"How many records, 1-{MCP_PAGE}. When more remain, the result's \"next\" is the cursor for the next page."))]


def _page(name: str, rows: list[dict], limit: int) -> dict[str, Any]:
    """A forward page of *rows* (fetched *limit* + 1, oldest first): ``{name: [...], "next": the id of the
    page's last row when more remain, else None}``."""
    return {name: rows[:limit], "next": rows[limit - 1]["id"] if len(rows) > limit else None}


def _tool(*, read_only: bool = False, idempotent: bool = False, destructive: bool = False) -> Callable:
    """Mark a method of a tool group (``federation.apps.mcp_server.AgentTools``) as an MCP tool (with hints for the client)."""

    def mark(fn: Callable) -> Callable:
        fn._mcp_hints = ToolAnnotations(read_only_hint=read_only, idempotent_hint=idempotent or read_only,
                                        destructive_hint=destructive, open_world_hint=False)
        return fn

    return mark

