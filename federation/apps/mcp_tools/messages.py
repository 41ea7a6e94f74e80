"""The messaging tools: send, receive and acknowledge, the inbox, history, receipts, pulse, broadcast."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field

from ... import messaging
from ._params import AgentName, IdempotencyKey, LeaseSeconds, MCP_PAGE, PageLimit, _tool, _CONTENT_LIMIT


class MessagingTools:
    """The messaging tools, acting as ``self.agent``."""

    agent: str

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
