"""Governance: polls with votes, and collaborative sessions."""

from __future__ import annotations

from .domain import validate as v
from . import core
from .domain import clock as _clock
from .errors import NotFoundError, PermissionDeniedError

__all__ = ["create_poll", "vote", "close_poll", "get_poll", "list_polls", "create_session", "assign_role",
           "attach_artifact", "review_artifact", "set_phase", "get_session", "list_sessions"]

POLL_STATUSES = ("open", "closed")
#: The largest page a list call returns (``limit``); without a limit the list is whole.
MAX_PAGE = 10_000


def with_tally(poll: dict) -> dict:
    """*poll* plus ``"tally": {option: count}``."""
    tally = {option: 0 for option in poll["options"]}
    for option in poll["votes"].values():
        # a vote must name an option of the poll: one that does not (imported, hand-edited) is not counted
        if isinstance(option, str) and option in tally:
            tally[option] += 1
    return {**poll, "tally": tally}


_with_tally = with_tally


def create_poll(creator: str, question: str, options: list[str]) -> str:
    """Open a poll; its id."""
    v.agent(creator, "creator")
    v.text(question, "question")
    opts = v.string_list(options, "options", limit=v.MAX_OPTIONS, min_items=2)
    poll = {"id": _clock.new_id(), "question": question, "options": opts, "status": "open", "creator": creator,
            "created_at": _clock.now(), "votes": {}}
    core.save_poll(poll)
    return poll["id"]


def vote(poll_id: str, voter: str, option: str) -> None:
    """Cast *voter*'s vote; voting again replaces the earlier vote."""
    v.ident(poll_id, "poll_id")
    v.agent(voter, "voter")
    v.text(option, "option")
    core.save_vote(poll_id, voter, option, _clock.now())


def close_poll(poll_id: str, agent: str) -> dict:
    """Close a poll (only its creator may); the closed poll with its tally."""
    v.ident(poll_id, "poll_id")
    v.agent(agent)
    core.save_poll_status(poll_id, agent, "closed")
    return get_poll(poll_id)


def get_poll(poll_id: str) -> dict:
    """The poll in its legacy shape plus ``"tally": {option: count}``."""
    v.ident(poll_id, "poll_id")
    poll = core.load_poll(poll_id)
    if poll is None:
        raise NotFoundError(f"poll {poll_id} does not exist")
    return _with_tally(poll)


def list_polls(status: str | None = None, limit: int | None = None, after: str | None = None) -> list[dict]:
    """Every poll (or those with *status*), oldest first, each with its tally.

    Paging: at most *limit* polls (1-``MAX_PAGE``; None: all), starting after the
    poll whose id is *after* (the last poll of the previous page).  An *after*
    that names no poll is a ValidationError.
    """
    if status is not None:
        v.choice(status, "status", POLL_STATUSES)
    v.page_limit(limit, maximum=MAX_PAGE)
    v.cursor(after)
    return [with_tally(p) for p in core.load_polls_page(status, limit, after)]


def create_session(lead: str, title: str, description: str | None = None) -> str:
    """Start a collaborative session led by *lead*; its id."""
    v.agent(lead, "lead")
    v.text(title, "title")
    v.optional_text(description, "description", limit=v.MAX_SHORT_TEXT * 4)
    stamp = _clock.now()
    session = {"id": _clock.new_id(), "title": title, "description": description, "lead": lead, "phase": "planning",
               "created_at": stamp, "updated_at": stamp, "roles": {}, "artifacts": {}, "reviews": {}}
    core.save_session(session)
    return session["id"]


def _session_of(session_id: str) -> dict:
    session = core.load_session(session_id)
    if session is None:
        raise NotFoundError(f"session {session_id} does not exist")
    return session


def _require(session_id: str, by: str | None, what: str, *, lead: bool) -> None:
    """Refuse *by* (when given) what only the session's lead (*lead*) or a member may do.

    A member is an agent with a role in the session; the lead always counts as
    one.  Checked before the write, outside its lock: no call takes a right
    away (the lead never changes, a role is replaced, never removed), so a
    check that passed still holds when the write lands.
    """
    if by is None:
        return
    v.agent(by, "by")
    session = _session_of(session_id)
    if by == session.get("lead"):
        return
    if lead:
        raise PermissionDeniedError(
            f"{by!r} may not {what} of session {session_id}: only its lead {session.get('lead')!r} may")
    if by not in (session.get("roles") or {}):
        raise PermissionDeniedError(
            f"{by!r} may not {what} of session {session_id}: it has no role in it (its lead "
            f"{session.get('lead')!r} gives roles with assign_role)")


def assign_role(session_id: str, agent: str, role: str, subtask: str | None = None, *, by: str | None = None) -> None:
    """Give *agent* a role (and optionally a subtask) in a session; replaces an earlier one.

    *by*: the agent asking; only the session's lead may (else :class:`PermissionDeniedError`).
    """
    v.ident(session_id, "session_id")
    v.agent(agent)
    v.text(role, "role", limit=256)
    v.optional_text(subtask, "subtask")
    _require(session_id, by, "assign roles", lead=True)
    core.save_role(session_id, agent, role, subtask, _clock.now())


def attach_artifact(session_id: str, artifact_type: str, path: str, *, by: str | None = None) -> None:
    """Attach an artifact (a path, never content) of *artifact_type* to a session.

    *by*: the agent asking; it needs a role in the session, or to be its lead
    (else :class:`PermissionDeniedError`).
    """
    v.ident(session_id, "session_id")
    v.text(artifact_type, "artifact_type", limit=256)
    v.text(path, "path")
    _require(session_id, by, "attach artifacts", lead=False)
    core.save_artifact(session_id, artifact_type, path, _clock.now())


def review_artifact(session_id: str, artifact_type: str, reviewer: str, status: str,
                    comments: str | None = None, *, by: str | None = None) -> None:
    """Review an attached artifact: status ``approved`` or ``changes_requested``.

    *by*: the agent asking; it reviews as itself (*reviewer*) and needs a role
    in the session, or to be its lead (else :class:`PermissionDeniedError`).
    """
    v.ident(session_id, "session_id")
    v.text(artifact_type, "artifact_type", limit=256)
    v.agent(reviewer, "reviewer")
    v.choice(status, "status", v.REVIEW_STATUSES)
    if comments is not None:
        v.content(comments, "comments", allow_empty=True)
    if by is not None and by != reviewer:
        raise PermissionDeniedError(f"{by!r} may not review as {reviewer!r}: a review is its reviewer's own")
    _require(session_id, by, "review artifacts", lead=False)
    core.save_review(session_id, artifact_type, reviewer, status, comments, _clock.now())


def set_phase(session_id: str, phase: str, *, by: str | None = None) -> None:
    """Move a session to *phase* (free text such as planning, executing, review, done).

    *by*: the agent asking; only the session's lead may (else :class:`PermissionDeniedError`).
    """
    v.ident(session_id, "session_id")
    v.text(phase, "phase", limit=256)
    _require(session_id, by, "set the phase", lead=True)
    core.save_session_phase(session_id, phase, _clock.now())


def get_session(session_id: str) -> dict:
    """The session in its legacy shape (roles, artifacts, reviews)."""
    v.ident(session_id, "session_id")
    return _session_of(session_id)


def list_sessions(limit: int | None = None, after: str | None = None) -> list[dict]:
    """Every session, oldest first; *limit* and *after* page as in :func:`list_polls`."""
    v.page_limit(limit, maximum=MAX_PAGE)
    v.cursor(after)
    return core.load_sessions_page(limit, after)
