"""The ``Store`` protocol: the persistence operations, and the two stores that implement them.

The path of a call, top-down: ``governance.vote`` validates and calls ``core.save_vote``.
``federation.core`` is the *file store* (the legacy JSON tree; a module that implements
``Store``), and :class:`federation.stores.sqlstore.SqlStore` is the *SQL store*.  The shim, installed
on ``core`` by ``federation._wiring``, sends each call, by phase, to the file store, to the SQL
store's method of the same name, or to both (and compares them).  ``core.SHIM_SPEC`` says for
each operation what it reads or writes and which lock it holds.

A new operation is: a method here, the function in ``core`` (and its ``SHIM_SPEC`` entry), the
method on ``SqlStore``; ``tests/test_store.py`` fails until the three agree.
"""

from __future__ import annotations

from typing import Any, Protocol


class MessageStore(Protocol):
    """Messages and their delivery: sends, inboxes, leases, acknowledgements, dead letters, idempotent sends
    (the SQL store's ``sql_messages``; the file store's ``stores/file_messages`` and ``file_delivery``)."""

    def save_message(self, message: dict) -> None:
        """Deliver *message* into its recipient's inbox."""

    def load_inbox(self, agent: str) -> list[dict]:
        """The unread messages of *agent*, oldest first (nothing is claimed)."""

    def claim_inbox(self, agent: str, ids: list[str] | None = None, read_at: str | None = None) -> list[dict]:
        """Claim the unread messages of *agent* (all, or only *ids*), oldest first."""

    def save_messages(self, messages: list[dict]) -> None:
        """Deliver several messages (a broadcast)."""

    def load_sent(self, agent: str, limit: int = 100, before: str | None = None) -> list[dict]:
        """The last *limit* messages *agent* sent (before message *before*), oldest first, with ``read_at``."""

    def lease_inbox(self, agent: str, lease_until: str, now: str, limit: int | None = None, max_attempts: int = 5,
                    ids: list[str] | None = None) -> list[dict]:
        """Lease *agent*'s deliverable messages (all, or only *ids*), oldest first, until *lease_until*: new
        ones and those whose lease is over; a lease over after *max_attempts* deliveries makes a dead letter."""

    def ack_messages(self, agent: str, ids: list[str], read_at: str) -> list[dict]:
        """Acknowledge *agent*'s delivered messages among *ids* (leased or dead), read at *read_at*; the
        messages acknowledged now, in the order given."""

    def load_dead_letters(self, agent: str | None, now: str, max_attempts: int = 5) -> list[dict]:
        """Messages (of *agent*, or everyone's) delivered *max_attempts* times, never acknowledged."""

    def save_keyed_messages(self, messages: list[dict], key: str) -> list[str]:
        """Deliver *messages* (one sender) under the sender's idempotency *key*, unless the key was used:
        then nothing is written and the ids of the first send are returned."""


class HistoryStore(Protocol):
    """The message history (the SQL store's ``sql_history``; the file store's ``stores/file_history``)."""

    def save_history(self, direction: str, messages: list[dict]) -> None:
        """Record *messages* as sent or received in the message history."""

    def load_history(
            self, agent: str | None = None, limit: int = 100, before: tuple[str, str] | None = None) -> list[dict]:
        """The last *limit* history entries (of *agent*, if given), oldest first."""


class NodeStore(Protocol):
    """What each agent is: context, heartbeats, expertise, profiles, the agents (the SQL store's ``sql_nodes``;
    the file store's ``stores/file_nodes``)."""

    def load_context(self, agent: str) -> dict | None:
        """The context of *agent* (``{"agent","text","last_heartbeat","updated_at"}``), or None."""

    def save_context(self, agent: str, text: str, updated_at: str) -> None:
        """Set the context text of *agent* (its heartbeat is kept)."""

    def save_heartbeat(self, agent: str, timestamp: str) -> None:
        """Record that *agent* is alive (its context text is kept)."""

    def load_expertise(self, agent: str) -> dict | None:
        """The expertise of *agent* (``{"agent","domains","updated_at"}``), or None."""

    def save_expertise(self, agent: str, domains: list[str], updated_at: str) -> None:
        """Replace the expertise domains of *agent*; an empty list removes them."""

    def load_profile(self, agent: str) -> dict | None:
        """The profile of *agent* (``{"agent","default_role","traits","updated_at"}``), or None."""

    def save_profile(self, agent: str, default_role: str | None, traits: dict | None, updated_at: str) -> None:
        """Set the profile of *agent*; a ``None`` field keeps its current value."""

    def load_agents(self) -> list[str]:
        """Every agent with context, expertise, a profile or an inbox."""

    def load_experts(self, domain: str) -> list[str]:
        """Agents that list *domain* among their expertise."""

    def load_agent_states(self) -> list[dict]:
        """Every known agent's ``{"agent","text","last_heartbeat"}`` by name (None where it has no context)."""

    def load_agents_by_role(self, role: str) -> list[str]:
        """Agents whose profile's ``default_role`` is *role*, by name."""


class PollStore(Protocol):
    """Polls and votes (the SQL store's ``sql_polls``; the file store's ``stores/file_polls``)."""

    def load_polls(self) -> dict[str, dict]:
        """Every poll, keyed by id (``shared/polls.json``)."""

    def save_polls(self, polls: dict[str, dict]) -> None:
        """Write the whole polls document (through the shim: only what changed since it was loaded)."""

    def load_poll(self, poll_id: str) -> dict | None:
        """The poll *poll_id* in the legacy shape, or None."""

    def save_poll(self, poll: dict) -> None:
        """Create a poll; a poll with the same id is a conflict."""

    def save_vote(self, poll_id: str, voter: str, option: str, voted_at: str) -> None:
        """Record *voter*'s vote (replacing an earlier one) on an open poll."""

    def save_poll_status(self, poll_id: str, agent: str, status: str) -> None:
        """Close a poll (only its creator may); closing a closed poll changes nothing."""

    def load_polls_page(
            self, status: str | None = None, limit: int | None = None, after: str | None = None) -> list[dict]:
        """Polls (with *status*, if given) oldest first, after the poll *after*, at most *limit*."""

    def load_open_polls(self, agent: str, limit: int) -> list[dict]:
        """The oldest *limit* open polls that *agent* has not voted on."""


class SessionStore(Protocol):
    """Collaborative sessions: roles, artifacts, reviews, phases (the SQL store's ``sql_sessions``; the file
    store's ``stores/file_sessions``)."""

    def load_sessions(self) -> dict[str, dict]:
        """Every session, keyed by id."""

    def load_session(self, session_id: str) -> dict | None:
        """The session *session_id* in the legacy shape (roles, artifacts, reviews), or None."""

    def save_session(self, session: dict) -> None:
        """Create a session; one with the same id is a conflict."""

    def save_role(self, session_id: str, agent: str, role: str, subtask: str | None, assigned_at: str) -> None:
        """Give *agent* a role (and subtask) in a session, replacing an earlier one."""

    def save_artifact(self, session_id: str, artifact_type: str, path: str, attached_at: str) -> None:
        """Attach an artifact of *artifact_type* to a session, replacing an earlier one."""

    def save_review(self, session_id: str, artifact_type: str, reviewer: str, status: str, comments: str | None,
                    reviewed_at: str) -> None:
        """Record *reviewer*'s review of an artifact, replacing an earlier one."""

    def save_session_phase(self, session_id: str, phase: str, updated_at: str) -> None:
        """Set the phase of a session."""

    def load_sessions_page(self, limit: int | None = None, after: str | None = None) -> list[dict]:
        """Sessions oldest first, after the session *after*, at most *limit*."""

    def load_roles(self, agent: str) -> list[dict]:
        """*agent*'s roles: ``{"session_id","title","role","subtask"}``, sessions oldest first."""


class TaskStore(Protocol):
    """The task registry (docs/tasks.md; the SQL store's ``sql_tasks``, the file store's ``stores/file_tasks``): a
    stored task keeps its last claim; what it means at a moment (a lease over is open again) is
    ``domain.entities.task_view``'s."""

    def save_task(self, task: dict) -> None:
        """Create a task; one with the same id is a conflict."""

    def load_task(self, task_id: str) -> dict | None:
        """The task *task_id* as stored, or None."""

    def claim_task(self, agent: str, lease_until: str, now: str, ids: list[str] | None = None) -> dict | None:
        """Lease to *agent* until *lease_until* the oldest task it may take at *now* (assigned to it or to no
        one, takeable, every dependency done), or exactly the task of *ids*; None when there is none."""

    def save_task_result(self, agent: str, task_id: str, result: Any, now: str) -> dict:
        """Complete the task *agent* holds (its lease not over at *now*) with *result*; the task done."""

    def save_task_release(self, agent: str, task_id: str, now: str) -> None:
        """Give back the task *agent* holds (its lease not over at *now*): open again."""

    def load_tasks_page(self, status: str | None = None, assignee: str | None = None, limit: int | None = None,
                        after: str | None = None, now: str = "") -> list[dict]:
        """Tasks oldest first (with *status* as seen at *now*, assigned to *assignee*), after the task
        *after*, at most *limit*."""


class Store(MessageStore, HistoryStore, NodeStore, PollStore, SessionStore, TaskStore, Protocol):
    """What both stores offer, by entity group; ``core.SHIM_SPEC`` names exactly these operations."""
