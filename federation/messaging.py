"""Messaging: inboxes and message history."""

from __future__ import annotations

from . import _validate as v
from . import core
from . import _clock
from .errors import ValidationError

__all__ = ["send_message", "check_inbox", "peek_inbox", "get_history"]

MAX_HISTORY = 10_000


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


def get_history(agent: str | None = None, limit: int = 100) -> list[dict]:
    """The last *limit* history entries (sent and received), oldest first."""
    if agent is not None:
        v.agent(agent)
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_HISTORY:
        raise ValidationError(f"limit must be a whole number from 1 to {MAX_HISTORY}, got {limit!r}")
    return core.load_history(agent, limit)
