"""Polls on the legacy file tree: one document, ``shared/polls.json`` (``{id: poll}``), votes inside.

The bodies of :mod:`federation.core`'s poll functions (``core`` binds them to its tree; the shim wraps
``core``'s names).  Every write reads, changes and writes back the whole document under the polls lock
(``entities.POLLS_LOCK``), which the shim also holds across both sides of a dual-phase poll call.  A vote
that names no option of its poll is not counted (skipped and logged once).
"""

from __future__ import annotations

import copy
from typing import Any

from ..domain.entities import POLLS, POLLS_LOCK, check_close, check_vote, split_votes
from ..errors import ConflictError, CorruptFileError, ValidationError
from .file_reads import by_creation, skip
from .files import Tree, atomic_write_json, locked, read_json

__all__ = ["load_polls", "save_polls", "load_poll", "save_poll", "save_vote", "save_poll_status",
           "load_polls_page", "load_open_polls"]


def _read_polls(t: Tree) -> dict[str, dict]:
    return read_json(t.polls_file, dict, {}, root=t.root)


def _normal_poll(t: Tree, poll_id: str, poll: dict) -> dict:
    if not isinstance(poll, dict):
        raise CorruptFileError(t.polls_file, f"poll {poll_id!r} is not an object")
    record = POLLS.record(poll, fallback={"id": poll_id})
    return {**record, "votes": _valid_votes(t, poll_id, record["options"], poll.get("votes"))}


def _valid_votes(t: Tree, poll_id: str, options: Any, votes: Any) -> dict[str, str]:
    """The votes of a legacy poll that name one of its options; the others are skipped (logged once)."""
    if not votes:
        return {}
    if not isinstance(votes, dict):
        skip(t.polls_file, f"poll {poll_id!r}: its votes are not an object")
        return {}
    kept, refused = split_votes(options, votes)
    for voter, problem in refused:
        skip(t.polls_file, f"poll {poll_id!r}: the vote of {voter!r} is not counted: {problem}")
    return kept


def _oldest_first(t: Tree) -> list[dict]:
    return sorted((_normal_poll(t, pid, p) for pid, p in _read_polls(t).items()), key=by_creation)


def load_polls(t: Tree) -> dict[str, dict]:
    """Every poll, keyed by id (``shared/polls.json``)."""
    return {pid: _normal_poll(t, pid, p) for pid, p in _read_polls(t).items()}


def save_polls(t: Tree, polls: dict[str, dict]) -> None:
    """Write the whole polls document (legacy).  Through the shim, a delta."""
    with locked(t, POLLS_LOCK):
        atomic_write_json(t.polls_file, copy.deepcopy(polls), root=t.root)


def load_poll(t: Tree, poll_id: str) -> dict | None:
    raw = _read_polls(t).get(poll_id)
    return None if raw is None else _normal_poll(t, poll_id, raw)


def save_poll(t: Tree, poll: dict) -> None:
    """Create a poll; a poll with the same id is a conflict."""
    with locked(t, POLLS_LOCK):
        polls = _read_polls(t)
        if poll["id"] in polls:
            raise ConflictError(f"poll {poll['id']} already exists")
        polls[poll["id"]] = copy.deepcopy(poll)
        atomic_write_json(t.polls_file, polls, root=t.root)


def save_vote(t: Tree, poll_id: str, voter: str, option: str, voted_at: str) -> None:
    """Record *voter*'s vote (replacing an earlier one) on an open poll."""
    with locked(t, POLLS_LOCK):
        polls = _read_polls(t)
        poll = polls.get(poll_id)
        check_vote(poll, poll_id, option)
        poll.setdefault("votes", {})[voter] = option
        atomic_write_json(t.polls_file, polls, root=t.root)


def save_poll_status(t: Tree, poll_id: str, agent: str, status: str) -> None:
    """Close a poll (only its creator may); closing a closed poll changes nothing."""
    with locked(t, POLLS_LOCK):
        polls = _read_polls(t)
        poll = polls.get(poll_id)
        if check_close(poll, poll_id, agent):
            poll["status"] = status
            atomic_write_json(t.polls_file, polls, root=t.root)


def load_polls_page(t: Tree, status: str | None = None, limit: int | None = None,
                    after: str | None = None) -> list[dict]:
    """Polls (with *status*, if given) oldest first, after the poll *after*, at most *limit*.

    *after* must name an existing poll (of any status) or it is a ValidationError.
    """
    everything = _oldest_first(t)
    if after is not None and not any(p["id"] == after for p in everything):
        raise ValidationError(f"after {after!r} is not the id of a poll: page from the start (after=None)")
    if after is not None:  # the cursor poll may have changed status since the last page
        cut = next(i for i, p in enumerate(everything) if p["id"] == after)
        everything = everything[cut + 1:]
    chosen = [p for p in everything if status is None or p["status"] == status]
    return chosen if limit is None else chosen[:limit]


def load_open_polls(t: Tree, agent: str, limit: int) -> list[dict]:
    """The oldest *limit* open polls that *agent* has not voted on."""
    return [p for p in _oldest_first(t) if p["status"] == "open" and agent not in p["votes"]][:limit]
