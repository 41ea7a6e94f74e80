"""The tools of polls and collaborative sessions."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field

from ... import governance
from ...domain import validate as v
from ._params import (AgentName, PollId, SessionId, ArtifactType, ReviewStatus, PollStatus, MCP_PAGE,
                      PageLimit, _page, _tool, _KIB, _CONTENT_LIMIT, _SHORT_LIMIT)


class GovernanceTools:
    """The tools of polls and collaborative sessions, acting as ``self.agent``."""

    agent: str

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
