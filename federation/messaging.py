"""Messaging: inboxes and message history."""

from __future__ import annotations

from .domain import clock as _clock
from . import _wiring, core
from .domain import validate as v
from .errors import ValidationError
from .governance import with_tally

__all__ = ["send_message", "check_inbox", "peek_inbox", "get_history", "pulse", "get_sent", "broadcast",
           "history_cursor"]

MAX_HISTORY = 10_000
#: How many open polls one pulse returns at most (the oldest first; list_polls pages through the rest).
PULSE_MAX_POLLS = 100
_DIRECTIONS = ("sent", "received")


def send_message(sender: str, recipient: str, content: str, message_type: str = "task",
                 reply_to: str | None = None) -> str:
    """Deliver *content* from *sender* to *recipient*'s inbox; the message id."""
    v.agent(sender, "sender")
    v.agent(recipient, "recipient")
    v.content(content)
    v.text(message_type, "message_type", limit=64)
    if reply_to is not None:
        v.ident(reply_to, "reply_to")
    message = {"id": _clock.new_id(), "sender": sender, "recipient": recipient, "content": content,
               "message_type": message_type, "reply_to": reply_to, "timestamp": _clock.now()}
    core.save_message(message)
    core.save_history("sent", [message])  # phase 1 only: SQL wrote it with the message
    return message["id"]


def check_inbox(agent: str) -> list[dict]:
    """Claim and return *agent*'s unread messages, oldest first.

    Each message is delivered exactly once, however many processes check
    the same inbox at the same time.
    """
    v.agent(agent)
    messages = core.claim_inbox(agent, read_at=_clock.now())
    if messages:  # phase 1 only: SQL wrote them with the claim
        core.save_history("received", messages)
    return messages


def peek_inbox(agent: str) -> list[dict]:
    """*agent*'s unread messages, oldest first, without claiming them."""
    v.agent(agent)
    return core.load_inbox(agent)


def history_cursor(entry: dict) -> str:
    """The cursor naming history *entry*: ``"<direction>:<message_id>"`` (pass it as ``before``)."""
    return f"{entry['direction']}:{entry['message_id']}"


def _history_position(before: object) -> tuple[str, str] | None:
    if before is None:
        return None
    if not isinstance(before, str) or before.count(":") != 1:
        raise ValidationError(f"before must be a history cursor such as 'sent:<message id>', got {before!r}")
    direction, message_id = before.split(":")
    v.choice(direction, "before (direction)", _DIRECTIONS)
    v.ident(message_id, "before (message id)")
    return direction, message_id


def get_history(agent: str | None = None, limit: int = 100, before: str | None = None) -> list[dict]:
    """The last *limit* history entries (sent and received), oldest first.

    *before*: a cursor (:func:`history_cursor` of an entry): only entries older
    than that entry, to page backwards; an unknown entry is a ValidationError.
    """
    if agent is not None:
        v.agent(agent)
    v.page_limit(limit, maximum=MAX_HISTORY, optional=False)
    position = _history_position(before)
    if position is None:
        return core.load_history(agent, limit)  # the legacy call, unchanged
    return core.load_history(agent, limit, position)


def get_sent(agent: str, limit: int = 100, before: str | None = None) -> list[dict]:
    """The last *limit* messages *agent* sent, oldest first, each with ``read_at`` (its read receipt).

    ``read_at`` is None until the recipient claimed the message.  From phase 2
    on the database answers; in phase 1 (files only) the legacy store keeps no
    receipts: the messages this process sent, with ``read_at`` always None.
    *before*: the id of a sent message; only older ones are returned.
    """
    v.agent(agent)
    v.page_limit(limit, maximum=MAX_HISTORY, optional=False)
    v.cursor(before, "before")
    return core.load_sent(agent, limit, before)


def _phase() -> int:
    """The rollout phase calls are routed by now: the federation's answer, the one it gives the shim."""
    return _wiring.phase()


def pulse(agent: str, claim: bool = True) -> dict:
    """One call per tick: heartbeat, inbox, open polls to vote on, session roles, everyone's context.

    Records *agent*'s heartbeat, claims its unread messages (exactly once, as
    :func:`check_inbox`; with ``claim=False`` only peeks), and returns
    ``{"agent", "phase", "messages", "open_polls", "more_open_polls", "roles", "agents"}``:
    the open polls *agent* has not voted on (the oldest ``PULSE_MAX_POLLS``, each with its
    tally; ``more_open_polls`` says whether there are more), its session roles
    (``session_id``, ``title``, ``role``, ``subtask``) and every known agent's
    ``agent``, ``text``, ``last_heartbeat`` (None for an agent that never set a context).
    """
    v.agent(agent)
    if not isinstance(claim, bool):
        raise ValidationError(f"claim must be true or false, got {claim!r}")
    stamp = _clock.now()
    core.save_heartbeat(agent, stamp)
    if claim:
        messages = core.claim_inbox(agent, read_at=stamp)
        if messages:  # phase 1 only: SQL wrote them with the claim
            core.save_history("received", messages)
    else:
        messages = core.load_inbox(agent)
    polls = core.load_open_polls(agent, PULSE_MAX_POLLS + 1)
    return {
        "agent": agent,
        "phase": _phase(),
        "messages": messages,
        "open_polls": [with_tally(p) for p in polls[:PULSE_MAX_POLLS]],
        "more_open_polls": len(polls) > PULSE_MAX_POLLS,
        "roles": core.load_roles(agent),
        "agents": core.load_agent_states(),
    }


def broadcast(sender: str, content: str, message_type: str = "task", role: str | None = None) -> list[str]:
    """Send *content* to every known agent but *sender* (with *role*: those whose profile's
    ``default_role`` is *role*); the message ids, one per recipient, by recipient name.

    All the messages are written in one transaction (on the database; the
    legacy files get one file per recipient).  A role that no one has gives
    an empty list and writes nothing.  Each recipient claims its copy once.
    """
    v.agent(sender, "sender")
    v.content(content)
    v.text(message_type, "message_type", limit=64)
    if role is not None:
        v.text(role, "role", limit=256)
    recipients = core.load_agents() if role is None else core.load_agents_by_role(role)
    recipients = sorted(a for a in set(recipients) if a != sender and v.is_agent(a))
    if not recipients:
        return []
    stamp = _clock.now()
    messages = [{"id": _clock.new_id(), "sender": sender, "recipient": r, "content": content,
                 "message_type": message_type, "reply_to": None, "timestamp": stamp} for r in recipients]
    core.save_messages(messages)
    core.save_history("sent", messages)  # phase 1 only: SQL wrote it with the messages
    return [m["id"] for m in messages]
