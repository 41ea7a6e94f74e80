"""The MCP server agents talk to: one tool per CONTRACT operation, acting as one agent.

``federation serve --agent NAME`` runs :func:`build_server` over stdio.  The
agent's identity belongs to the server, never to a tool argument: the tools
send, vote, claim the inbox, close polls, review and set context *as NAME*,
and no argument can change that (unknown arguments are refused, not ignored).
Reading another agent's public state (context, expertise, profile, polls,
sessions) is allowed.

Every :class:`~federation.errors.FederationError` becomes an MCP tool error
(``is_error``) with a message the model can act on; any other exception
becomes a tool error too, with its traceback logged to stderr.  Nothing but
protocol is written to stdout.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import inspect
import io
import json
import os
import re
import sys
from typing import Annotated, Any, Callable, Literal

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError, UnexpectedToolError
from mcp.server.mcpserver.tools import Tool
from mcp_types import ToolAnnotations
from pydantic import Field
from pydantic import ValidationError as PydanticValidationError

from .. import __version__, config, context, governance, messaging, tasks
from ..domain import validate as v
from .._logging import library_logger
from ..stores.sqlite import GateBusy
from ..errors import (BackfillRequiredError, ConflictError, FederationError, FileStorageError, NotFoundError,
                      PermissionDeniedError, StorageError, ValidationError)

__all__ = ["build_server", "FederationServer", "TOOL_NAMES", "tools_acting_as"]

log = library_logger("federation.mcp")

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

_IDENTITY_WORDS = ("agent", "sender", "voter", "creator", "reviewer", "lead", "from", "as", "me", "self")


def _page(name: str, rows: list[dict], limit: int) -> dict[str, Any]:
    """A forward page of *rows* (fetched *limit* + 1, oldest first): ``{name: [...], "next": the id of the
    page's last row when more remain, else None}``."""
    return {name: rows[:limit], "next": rows[limit - 1]["id"] if len(rows) > limit else None}


def _tool(*, read_only: bool = False, idempotent: bool = False, destructive: bool = False) -> Callable:
    """Mark a :class:`AgentTools` method as an MCP tool (with hints for the client)."""

    def mark(fn: Callable) -> Callable:
        fn._mcp_hints = ToolAnnotations(read_only_hint=read_only, idempotent_hint=idempotent or read_only,
                                        destructive_hint=destructive, open_world_hint=False)
        return fn

    return mark


class AgentTools:
    """The tools of one agent's server; ``self.agent`` is who every write acts as."""

    def __init__(self, agent: str):
        self.agent = v.agent(agent, "agent")

    # -- messaging -------------------------------------------------------------------------------

    @_tool()
    def send_message(
        self,
        recipient: AgentName,
        content: Annotated[str, Field(description=f"The message text ({_CONTENT_LIMIT}, non-empty).")],
        message_type: Annotated[str, Field(description=(
            "A free-form kind such as task, question, answer, info (non-empty, at most 64 bytes)."))] = "task",
        reply_to: Annotated[str | None, Field(description=(
            "The id of the message this one answers, if any."))] = None,
        idempotency_key: IdempotencyKey = None,
    ) -> dict[str, Any]:
        """Send a message from you to another agent's inbox.

        You are always the sender. Returns {"message_id": str}. The recipient
        receives it through check_inbox, receive or pulse. Pass an idempotency_key
        when you may retry (a timeout, an error saying the send may or may not have
        been applied): the same key again returns the first message's id and sends nothing.
        """
        return {"message_id": messaging.send_message(self.agent, recipient, content, message_type, reply_to,
                                                     idempotency_key)}

    @_tool()
    def receive(
        self,
        lease: LeaseSeconds = 60,
        limit: Annotated[int | None, Field(ge=1, le=MCP_PAGE, description=(
            f"At most this many messages (1-{MCP_PAGE}); omit for up to {MCP_PAGE}."))] = None,
    ) -> dict[str, Any]:
        """Receive your unread messages, oldest first, WITHOUT losing them if you fail: each is leased
        to you for `lease` seconds. Call ack with a message's id once you have acted on it; a
        message you do not ack comes back after its lease (its "attempt" counts the deliveries),
        and after 5 attempts it is set aside as a dead letter. Prefer receive + ack over
        check_inbox for work you must not lose; check_inbox marks messages read at once.

        Returns {"messages": [{"id", "sender", "recipient", "content", "message_type", "reply_to",
        "timestamp", "attempt", "lease_until"}], "count": int}.
        """
        messages = messaging.receive(self.agent, lease, MCP_PAGE if limit is None else limit)
        return {"messages": messages, "count": len(messages)}

    @_tool(idempotent=True)
    def ack(
        self,
        ids: Annotated[list[str], Field(max_length=1000, description=(
            "The ids of messages you received (receive, or pulse with lease) and have acted on."))],
    ) -> dict[str, Any]:
        """Acknowledge messages you received with receive (or pulse with lease): they are done, marked
        read (the sender's receipt says so) and never delivered again.

        Returns {"acked": [ids acknowledged now], "count": int}; ids that are not your received,
        unacknowledged messages are left out.
        """
        acked = messaging.ack(self.agent, ids)
        return {"acked": acked, "count": len(acked)}

    @_tool()
    def check_inbox(self) -> dict[str, Any]:
        """Receive your unread messages, oldest first, and mark them read.

        Each message is delivered exactly once: a second call returns only
        messages that arrived since. Returns {"messages": [{"id", "sender",
        "recipient", "content", "message_type", "reply_to", "timestamp"}],
        "count": int}. Use peek_inbox to look without marking them read.
        """
        messages = messaging.check_inbox(self.agent)
        return {"messages": messages, "count": len(messages)}

    @_tool(read_only=True)
    def peek_inbox(self) -> dict[str, Any]:
        """List your unread messages, oldest first, without marking them read.

        Returns {"messages": [...], "count": int}, the same message shape as check_inbox.
        """
        messages = messaging.peek_inbox(self.agent)
        return {"messages": messages, "count": len(messages)}

    @_tool(read_only=True)
    def get_history(
        self,
        limit: PageLimit = MCP_PAGE,
        before: Annotated[str | None, Field(description=(
            "A \"next\" cursor from an earlier get_history call: the entries just older than those. "
            "Omit it for the newest entries."))] = None,
    ) -> dict[str, Any]:
        """Your message history: the last `limit` messages you sent or received, oldest first.

        Returns {"entries": [{"direction": "sent"|"received", "sender", "recipient",
        "content", "message_type", "timestamp", "message_id"}], "next": cursor or null}.
        "next" is set when older entries remain: pass it as `before` to read them.
        """
        entries = messaging.get_history(self.agent, limit + 1, before)
        older = len(entries) > limit
        entries = entries[-limit:]
        return {"entries": entries, "next": messaging.history_cursor(entries[0]) if older else None}

    @_tool(read_only=True)
    def sent_messages(
        self,
        limit: PageLimit = MCP_PAGE,
        before: Annotated[str | None, Field(description=(
            "A \"next\" cursor (a message id) from an earlier sent_messages call: the messages sent before "
            "those. Omit it for the newest."))] = None,
    ) -> dict[str, Any]:
        """The messages you sent, with read receipts: the last `limit`, oldest first.

        Returns {"messages": [{"id", "sender", "recipient", "content", "message_type",
        "reply_to", "timestamp", "read_at"}], "next": cursor or null}. "read_at" is null
        until the recipient received the message (check_inbox or pulse). Receipts come from
        the database (rollout phase 2 on); with the database off (phase 1) "read_at" is always
        null and only messages sent through this server since it started are listed.
        """
        messages = messaging.get_sent(self.agent, limit + 1, before)
        older = len(messages) > limit
        messages = messages[-limit:]
        return {"messages": messages, "next": messages[0]["id"] if older else None}

    @_tool()
    def pulse(
        self,
        claim: Annotated[bool, Field(description=(
            "true: receive your unread messages and mark them read (as check_inbox); "
            "false: only look at them (as peek_inbox)."))] = True,
        lease: Annotated[float | None, Field(gt=0, le=messaging.MAX_LEASE_S, description=(
            "Seconds: lease your new messages (as receive) instead of marking them read; ack them "
            "(here, next tick, or with ack) once acted on."))] = None,
        ack: Annotated[list[str] | None, Field(max_length=1000, description=(
            "Ids of leased messages you have acted on: acknowledged first (as the ack tool)."))] = None,
        wait: Annotated[float, Field(ge=0, le=messaging.MAX_WAIT_S, description=(
            "Seconds (0-30): when no message is waiting, wait up to this long for one; the call "
            "returns as soon as one arrives."))] = 0,
    ) -> dict[str, Any]:
        """Everything you need each tick, in one call: records your heartbeat, acknowledges what you
        finished (ack), receives your inbox (leased with lease, else marked read), optionally waits
        for a message (wait), and lists what awaits you. The loop that loses nothing:
        pulse(lease=60, ack=[ids you finished], wait=20).

        Returns {"agent", "phase", "messages": [...] (as check_inbox, or as receive with lease),
        "acked": [...] (when ack is given),
        "open_polls": [...] (open polls you have not voted on, oldest first, at most 100, shaped as
        get_poll), "more_open_polls": bool (list_polls status=open pages through all),
        "roles": [{"session_id", "title", "role", "subtask"}] (your session roles),
        "agents": [{"agent", "text", "last_heartbeat"}] (every agent's context; text null when
        it never set one)}.
        """
        return messaging.pulse(self.agent, claim, lease, ack, wait)

    @_tool()
    def broadcast(
        self,
        content: Annotated[str, Field(description=f"The message text ({_CONTENT_LIMIT}, non-empty).")],
        message_type: Annotated[str, Field(description=(
            "A free-form kind such as task, question, answer, info (non-empty, at most 64 bytes)."))] = "task",
        role: Annotated[str | None, Field(description=(
            "Only agents whose profile's default_role is this role; omit to reach every agent."))] = None,
        idempotency_key: IdempotencyKey = None,
    ) -> dict[str, Any]:
        """Send one message from you to every known agent but you (or to those with `role`).

        All copies are written together; each recipient receives its copy once. Returns
        {"message_ids": [...], "count": int}; a role nobody has gives count 0 (nothing sent).
        """
        ids = messaging.broadcast(self.agent, content, message_type, role, idempotency_key)
        return {"message_ids": ids, "count": len(ids)}

    # -- context ---------------------------------------------------------------------------------

    @_tool(idempotent=True)
    def set_context(
        self,
        text: Annotated[str, Field(description=(
            f"What you are working on, for other agents to read ({_CONTENT_LIMIT}; empty clears it)."))],
    ) -> dict[str, Any]:
        """Replace your context window text (what other agents see with get_context).

        Your heartbeat is kept. Returns {"ok": true}.
        """
        context.set_context(self.agent, text)
        return {"ok": True}

    @_tool(read_only=True)
    def get_context(
        self,
        agent: OtherAgent = None,
    ) -> dict[str, Any]:
        """Read an agent's context window (yours by default).

        Returns {"context": {"agent", "text", "last_heartbeat", "updated_at"}}
        or {"context": null} when that agent never set one.
        """
        return {"context": context.get_context(self.agent if agent is None else agent)}

    @_tool(idempotent=True)
    def heartbeat(self) -> dict[str, Any]:
        """Record that you are alive now (sets your last_heartbeat). Returns {"ok": true}."""
        context.heartbeat(self.agent)
        return {"ok": True}

    @_tool(read_only=True)
    def list_agents(self) -> dict[str, Any]:
        """Every agent known to the federation (with context, expertise, a profile or an inbox).

        Returns {"agents": [name, ...]} sorted by name.
        """
        return {"agents": context.list_agents()}

    # -- expertise -------------------------------------------------------------------------------

    @_tool(idempotent=True)
    def set_expertise(
        self,
        domains: Annotated[list[str], Field(description=(
            f"Your domains, e.g. [\"postgresql\", \"testing\"]: up to {v.MAX_DOMAINS} non-empty strings; "
            "duplicates are folded; [] clears your expertise."))],
    ) -> dict[str, Any]:
        """Replace your list of expertise domains (what find_experts searches).

        Returns {"domains": [...]}, sorted and without duplicates.
        """
        context.set_expertise(self.agent, domains)
        return {"domains": context.get_expertise(self.agent)}

    @_tool(read_only=True)
    def get_expertise(
        self,
        agent: OtherAgent = None,
    ) -> dict[str, Any]:
        """An agent's expertise domains (yours by default). Returns {"agent": str, "domains": [...]}."""
        name = self.agent if agent is None else agent
        return {"agent": name, "domains": context.get_expertise(name)}

    @_tool(read_only=True)
    def find_experts(
        self,
        domain: Annotated[str, Field(description="The exact domain to look for, e.g. \"postgresql\".")],
    ) -> dict[str, Any]:
        """Agents that list `domain` among their expertise (exact match).

        Returns {"domain": str, "agents": [name, ...]}; an empty list when nobody does.
        """
        return {"domain": domain, "agents": context.find_experts(domain)}

    # -- profiles --------------------------------------------------------------------------------

    @_tool(idempotent=True)
    def set_profile(
        self,
        default_role: Annotated[str | None, Field(description=(
            "The role you usually take, e.g. reviewer, implementer (at most 256 bytes); omit to keep it."))] = None,
        traits: Annotated[dict[str, Any] | None, Field(description=(
            f"A JSON object of traits, e.g. {{\"careful\": true}} ({_CONTENT_LIMIT} as JSON); "
            "replaces your traits; omit to keep them."))] = None,
    ) -> dict[str, Any]:
        """Set your profile. An argument you omit keeps its current value. Returns {"ok": true}."""
        context.set_profile(self.agent, default_role, traits)
        return {"ok": True}

    @_tool(read_only=True)
    def get_profile(
        self,
        agent: OtherAgent = None,
    ) -> dict[str, Any]:
        """An agent's profile (yours by default).

        Returns {"profile": {"agent", "default_role", "traits", "updated_at"}} or
        {"profile": null} when that agent has none.
        """
        return {"profile": context.get_profile(self.agent if agent is None else agent)}

    # -- polls -----------------------------------------------------------------------------------

    @_tool()
    def create_poll(
        self,
        question: Annotated[str, Field(description=f"The question (non-empty, {_SHORT_LIMIT}).")],
        options: Annotated[list[str], Field(description=(
            f"The answers to choose from: 2-{v.MAX_OPTIONS} distinct non-empty strings, e.g. [\"yes\", \"no\"]."))],
    ) -> dict[str, Any]:
        """Open a poll that you own; only you can close it. Returns {"poll_id": str}."""
        return {"poll_id": governance.create_poll(self.agent, question, options)}

    @_tool(idempotent=True)
    def vote(
        self,
        poll_id: PollId,
        option: Annotated[str, Field(description="One of the poll's options, spelled exactly as listed.")],
    ) -> dict[str, Any]:
        """Cast your vote on an open poll; voting again replaces your earlier vote.

        Fails on a closed poll, an unknown poll, or an option not on the poll.
        Returns {"ok": true}; get_poll shows the tally.
        """
        governance.vote(poll_id, self.agent, option)
        return {"ok": True}

    @_tool(destructive=True)
    def close_poll(self, poll_id: PollId) -> dict[str, Any]:
        """Close a poll you created (nobody else may close it); no more votes are accepted.

        Returns {"poll": ...} with the final "tally" (see get_poll).
        """
        return {"poll": governance.close_poll(poll_id, self.agent)}

    @_tool(read_only=True)
    def get_poll(self, poll_id: PollId) -> dict[str, Any]:
        """Read a poll with its votes and tally.

        Returns {"poll": {"id", "question", "options", "status": "open"|"closed",
        "creator", "created_at", "votes": {voter: option}, "tally": {option: count}}}.
        """
        return {"poll": governance.get_poll(poll_id)}

    @_tool(read_only=True)
    def list_polls(
        self,
        status: Annotated[PollStatus | None, Field(description="Only polls with this status; omit for all.")] = None,
        limit: PageLimit = MCP_PAGE,
        after: Annotated[str | None, Field(description=(
            "A \"next\" cursor from an earlier list_polls call (the id of its last poll): the polls after it. "
            "Omit it for the first page."))] = None,
    ) -> dict[str, Any]:
        """Polls (or only open / closed ones), oldest first, each with its tally, a page at a time.

        Returns {"polls": [...], "next": cursor or null}, each poll shaped as in get_poll;
        "next" is set when more polls remain: pass it as `after` (with the same status).
        """
        return _page("polls", governance.list_polls(status, limit + 1, after), limit)

    # -- sessions --------------------------------------------------------------------------------

    @_tool()
    def create_session(
        self,
        title: Annotated[str, Field(description=f"A short title (non-empty, {_SHORT_LIMIT}).")],
        description: Annotated[str | None, Field(description=(
            f"What the session is for (at most {4 * v.MAX_SHORT_TEXT // _KIB} KiB); optional."))] = None,
    ) -> dict[str, Any]:
        """Start a collaborative session that you lead; it starts in phase "planning".

        Returns {"session_id": str}.
        """
        return {"session_id": governance.create_session(self.agent, title, description)}

    @_tool(idempotent=True)
    def assign_role(
        self,
        session_id: SessionId,
        agent: AgentName,
        role: Annotated[str, Field(description=(
            "The role, e.g. implementer, reviewer (non-empty, at most 256 bytes)."))],
        subtask: Annotated[str | None, Field(description=(
            f"What this agent should do ({_SHORT_LIMIT}); optional."))] = None,
    ) -> dict[str, Any]:
        """Give an agent (yourself or another) a role in a session; replaces that agent's earlier role.

        Only the session's lead may (anyone else gets an error starting "forbidden:").
        Returns {"ok": true}.
        """
        governance.assign_role(session_id, agent, role, subtask, by=self.agent)
        return {"ok": True}

    @_tool(idempotent=True)
    def attach_artifact(
        self,
        session_id: SessionId,
        artifact_type: ArtifactType,
        path: Annotated[str, Field(description=(
            f"Where the artifact lives, e.g. docs/design.md (a path or URL, never the content; {_SHORT_LIMIT})."))],
    ) -> dict[str, Any]:
        """Attach an artifact (by path) to a session under `artifact_type`; replaces one of the same type.

        You need a role in the session, or to be its lead (else an error starting "forbidden:").
        Returns {"ok": true}.
        """
        governance.attach_artifact(session_id, artifact_type, path, by=self.agent)
        return {"ok": True}

    @_tool(idempotent=True)
    def review_artifact(
        self,
        session_id: SessionId,
        artifact_type: ArtifactType,
        status: Annotated[ReviewStatus, Field(description="Your verdict: approved or changes_requested.")],
        comments: Annotated[str | None, Field(description=(
            f"What to change, or why ({_CONTENT_LIMIT}); optional."))] = None,
    ) -> dict[str, Any]:
        """Review a session's artifact as yourself; reviewing again replaces your earlier review.

        You need a role in the session, or to be its lead (else an error starting "forbidden:").
        Returns {"ok": true}; get_session shows reviews[artifact_type][reviewer].
        """
        governance.review_artifact(session_id, artifact_type, self.agent, status, comments, by=self.agent)
        return {"ok": True}

    @_tool(idempotent=True)
    def set_phase(
        self,
        session_id: SessionId,
        phase: Annotated[str, Field(description=(
            "The new phase, free text such as planning, executing, review, done (non-empty, at most 256 bytes)."))],
    ) -> dict[str, Any]:
        """Move a session to another phase; only its lead may (else an error starting "forbidden:").

        Returns {"ok": true}.
        """
        governance.set_phase(session_id, phase, by=self.agent)
        return {"ok": True}

    @_tool(read_only=True)
    def get_session(self, session_id: SessionId) -> dict[str, Any]:
        """Read a session.

        Returns {"session": {"id", "title", "description", "lead", "phase", "created_at",
        "updated_at", "roles": {agent: {"role", "subtask", "assigned_at"}},
        "artifacts": {type: {"path", "attached_at"}},
        "reviews": {type: {reviewer: {"status", "comments", "reviewed_at"}}}}}.
        """
        return {"session": governance.get_session(session_id)}

    @_tool(read_only=True)
    def list_sessions(
        self,
        limit: PageLimit = MCP_PAGE,
        after: Annotated[str | None, Field(description=(
            "A \"next\" cursor from an earlier list_sessions call (the id of its last session): the sessions "
            "after it. Omit it for the first page."))] = None,
    ) -> dict[str, Any]:
        """Sessions, oldest first, a page at a time.

        Returns {"sessions": [...], "next": cursor or null}, each shaped as in get_session;
        "next" is set when more sessions remain: pass it as `after`.
        """
        return _page("sessions", governance.list_sessions(limit + 1, after), limit)


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


#: The tools, in CONTRACT order.
TOOL_NAMES: tuple[str, ...] = tuple(name for name, fn in vars(AgentTools).items() if hasattr(fn, "_mcp_hints"))

_ERROR_KINDS: tuple[tuple[type[FederationError], str], ...] = (
    (ValidationError, "invalid argument"),
    (NotFoundError, "not found"),
    (PermissionDeniedError, "forbidden"),
    (ConflictError, "refused"),
    (BackfillRequiredError, "database not ready"),
    (FileStorageError, "storage failed"),  # disk full, read-only...: the operator must act, retrying won't help
    (StorageError, "storage unavailable, try again shortly"),
    (FederationError, "failed"),
)


def _run_guarded(name: str, method: Callable, agent: str, kwargs: dict[str, Any]) -> Any:
    """Run *method*; federation errors become tool errors, anything else is logged then a tool error."""
    try:
        return method(**kwargs)
    except FederationError as exc:
        kind = next(label for cls, label in _ERROR_KINDS if isinstance(exc, cls))
        # The caller's mistakes are routine; a storage failure is the operator's to see.
        emit = log.warning if isinstance(exc, StorageError) else log.info
        emit("tool_refused", tool=name, agent=agent, error=type(exc).__name__, message=str(exc))
        raise ToolError(f"{kind}: {exc}") from exc
    except GateBusy:
        raise  # nothing written: the caller runs the call again where it may wait (the HTTP server)
    except Exception as exc:
        log.exception("tool_crashed", tool=name, agent=agent, error=type(exc).__name__)
        raise ToolError(f"internal error ({type(exc).__name__}); the server logged the details "
                        "and keeps serving") from exc


def _guarded(name: str, method: Callable, agent: str) -> Callable:
    """*method* run through :func:`_run_guarded` (one agent's tool)."""

    @functools.wraps(method)
    def call(**kwargs: Any) -> Any:
        return _run_guarded(name, method, agent, kwargs)

    return call


def _acting_as_caller(name: str, current_agent: Callable[[], str]) -> Callable:
    """The tool *name* of whichever agent ``current_agent()`` names when it is called (one tool, every agent)."""

    def call(**kwargs: Any) -> Any:
        agent = current_agent()
        return _run_guarded(name, getattr(AgentTools(agent), name), agent, kwargs)

    call.__name__ = name
    return call


#: The longest JSON-RPC line the stdio server reads (characters).  The largest valid request (256
#: domains of 4 KiB, every character JSON-escaped) is well under it; a 100 MB message is refused
#: without ever being held whole (it was read into memory before the size check said no).
MAX_REQUEST_CHARS = 8 * 1024 * 1024
#: the tool name an over-long request is replaced by, so that its caller gets a tool error with its id
TOO_LARGE = "__request_too_large__"
_ID = re.compile(r'"id"\s*:\s*("(?:[^"\\]|\\.){0,200}"|-?\d{1,30})')


def _own_stdin() -> io.TextIOWrapper:
    """stdin as UTF-8 text on a descriptor of our own (closing it never closes fd 0)."""
    return io.TextIOWrapper(os.fdopen(os.dup(0), "rb"), encoding="utf-8", errors="replace")


class _BoundedLines:
    """Text lines of at most *limit* characters: a longer line is read through in 1 MiB pieces and
    dropped, and a ``tools/call`` of :data:`TOO_LARGE` carrying its id takes its place."""

    def __init__(self, raw: io.TextIOBase, limit: int):
        self.raw, self.limit = raw, limit

    def readline(self) -> str:
        line = self.raw.readline(self.limit + 1)
        if len(line) <= self.limit or line.endswith("\n"):
            return line
        head, size = line[:4096], len(line)
        while True:
            piece = self.raw.readline(1 << 20)
            size += len(piece)
            if not piece or piece.endswith("\n"):
                break
        log.warning("request_too_large", characters=size, limit=self.limit)
        found = _ID.search(head)
        if found is None:  # no id to answer: the SDK reports an unparsable line
            return "{}\n"
        return json.dumps({"jsonrpc": "2.0", "id": json.loads(found.group(1)), "method": "tools/call",
                           "params": {"name": TOO_LARGE, "arguments": {"size": size}}}) + "\n"

    def close(self) -> None:
        self.raw.close()


class FederationServer(MCPServer):
    """An :class:`MCPServer` that refuses arguments a tool does not declare.

    Pydantic would silently drop an unknown argument such as ``sender`` or
    ``voter``; an agent that tries to act as someone else must be told no.
    """

    def __init__(self, agent: str | None, tools: list[Tool], **kwargs: Any):
        self.agent = agent  # None: the agent of each call is the request's (the HTTP server, a subclass)
        self._params = {t.name: (set(t.parameters.get("properties", {})), set(t.parameters.get("required", [])))
                        for t in tools}
        super().__init__(tools=tools, **kwargs)

    async def run_stdio_async(self) -> None:
        """The SDK's stdio transport, reading requests through :class:`_BoundedLines`: a request over
        :data:`MAX_REQUEST_CHARS` is refused before it is held in memory whole."""
        import anyio
        from mcp.server.stdio import stdio_server

        stdin = anyio.wrap_file(_BoundedLines(_own_stdin(), MAX_REQUEST_CHARS))
        async with stdio_server(stdin=stdin) as (read_stream, write_stream):
            await self._lowlevel_server.run(read_stream, write_stream,
                                            self._lowlevel_server.create_initialization_options())

    def acting_as(self, context: Any) -> str:
        """The agent a call acts as: this server's (stdio); a subclass serving many agents reads the request."""
        assert self.agent is not None
        return self.agent

    async def call_tool(self, name: str, arguments: dict[str, Any], context: Any = None) -> Any:
        if name == TOO_LARGE:  # put in the place of an over-long request by _BoundedLines
            raise ToolError(f"request too large: {arguments.get('size')} characters; the limit is "
                            f"{MAX_REQUEST_CHARS} (message content is at most {_CONTENT_LIMIT})")
        if name in self._params:
            allowed, required = self._params[name]
            unknown = sorted(set(arguments) - allowed)
            if unknown:
                agent = self.acting_as(context)
                hint = ""
                if any(u.lower() in _IDENTITY_WORDS for u in unknown):
                    hint = f" This server always acts as agent {agent!r}; identity is not an argument."
                accepted = ", ".join(sorted(allowed)) or "no arguments"
                log.info("tool_refused", tool=name, agent=agent, error="unknown_arguments", arguments=unknown)
                raise ToolError(f"invalid argument: unknown argument(s) {', '.join(unknown)}; "
                                f"{name} accepts {accepted}.{hint}")
            missing = sorted(required - set(arguments))
            if missing:
                raise ToolError(f"invalid argument: missing required argument(s) {', '.join(missing)}")
        try:
            return await super().call_tool(name, arguments, context)
        except UnexpectedToolError:
            raise
        except ToolError as exc:
            # The text starts with the kind (docs/mcp-and-agents.md, "Errors"): the SDK's
            # "Error executing tool NAME: " prefix is taken off.
            if not isinstance(exc.__cause__, PydanticValidationError):
                raise ToolError(str(exc).removeprefix(f"Error executing tool {name}: ")) from exc.__cause__
            # One line per argument, without pydantic's class names and documentation links.
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'arguments'}: {e['msg']}"
                                 for e in exc.__cause__.errors())
            raise ToolError(f"invalid argument: {problems}") from exc.__cause__


def _instructions(agent: str) -> str:
    return (
        f"You are agent {agent!r} of a federation of cooperating agents. These tools read and change the "
        "federation's shared state: inbox messages, context, expertise, profiles, polls and sessions. Every "
        f"write acts as {agent!r} (sender, voter, poll creator, reviewer, session lead): there is no argument "
        "to act as anyone else. A session's phase and roles are its lead's; its artifacts and reviews need a "
        "role in it. Call check_inbox to receive your messages (each is delivered once), or "
        "receive then ack so that a message you could not finish comes back, "
        "heartbeat now and then to show you are alive, and set_context to say what you are working on. "
        "pulse does the heartbeat, the inbox and the list of polls awaiting your vote in one call per tick."
    )


def build_server(agent: str, like: list[Tool] | None = None) -> FederationServer:
    """The MCP server of *agent*, with one tool per CONTRACT operation (*like*: see :func:`agent_tools_list`).

    Raises :class:`ValidationError` for an invalid agent name.
    """
    agent_tools = AgentTools(agent)
    return FederationServer(agent_tools.agent, agent_tools_list(agent_tools, like), name="federation",
                            title=f"federation ({agent})", instructions=_instructions(agent_tools.agent),
                            version=__version__)


def agent_tools_list(agent_tools: AgentTools, like: list[Tool] | None = None) -> list[Tool]:
    """One MCP tool per CONTRACT operation, each acting as ``agent_tools.agent``.

    *like*: the tools of another agent, copied with this agent's functions -- the schemas and argument
    models are the same for every agent, and building them is what costs.
    """
    if like is not None:
        return [tool.model_copy(update={"fn": _guarded(tool.name, getattr(agent_tools, tool.name),
                                                       agent_tools.agent)}) for tool in like]
    tools = []
    for name in TOOL_NAMES:
        method = getattr(agent_tools, name)
        tool = Tool.from_function(_guarded(name, method, agent_tools.agent), name=name,
                                  description=inspect.cleandoc(method.__doc__ or ""),
                                  annotations=method._mcp_hints, structured_output=True)
        tool.parameters["additionalProperties"] = False
        tools.append(tool)
    return tools


def tools_acting_as(current_agent: Callable[[], str]) -> list[Tool]:
    """One MCP tool per CONTRACT operation, each acting as the agent ``current_agent()`` names at the call
    (the HTTP server: one set of tools for every agent, nothing kept per agent).  The schemas, argument
    models and descriptions are those of :func:`agent_tools_list`; the functions are plain (not async):
    the caller decides where they run."""
    return [tool.model_copy(update={"fn": _acting_as_caller(tool.name, current_agent)})
            for tool in agent_tools_list(AgentTools("agent"))]


def _client_gone(error: BaseException) -> bool:
    """Whether *error* (a task group's, possibly nested) is only a closed stdout: the client went away."""
    inner = getattr(error, "exceptions", None)  # an exception group (Python 3.11, or the 3.10 backport)
    if isinstance(inner, (list, tuple)) and inner:
        return all(_client_gone(e) for e in inner)
    return isinstance(error, BrokenPipeError) or (isinstance(error, OSError) and error.errno == errno.EPIPE)


def _stdout_to_devnull() -> None:
    """Point fd 1 at /dev/null, so that the interpreter's last flush of a dead pipe raises nothing."""
    with contextlib.suppress(OSError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def serve(agent: str) -> None:
    """Serve *agent*'s tools over stdio until the client closes stdin."""
    server = build_server(agent)
    s = config.settings()
    from .. import rollout

    rollout.announce_agent(server.agent)  # in the fleet from the start, not from its first call
    in_effect = rollout.phase_in_effect()
    log.info("mcp_server_started", agent=server.agent, phase=in_effect["phase"], phase_source=in_effect["source"],
             engine=s.engine, database=s.db_display, tools=len(TOOL_NAMES))
    stopped_by = None
    try:
        server.run("stdio")
    except KeyboardInterrupt:  # Ctrl-C in a terminal: stop quietly, like a closed stdin
        stopped_by = "SIGINT"
    except SystemExit as exc:  # SIGTERM through the CLI's handler (federation.apps.signals): exit after the log line
        stopped_by = getattr(exc, "signal", None) or "exit"
        raise
    except BaseException as exc:  # the SDK's task group wraps a closed stdout in an exception group
        if not _client_gone(exc):
            raise
        stopped_by = "client gone"  # the client died mid-reply: nothing to answer to, no traceback
        _stdout_to_devnull()
    finally:
        log.info("mcp_server_stopped", agent=server.agent, **({"signal": stopped_by} if stopped_by else {}))
