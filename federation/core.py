"""The federation's persistence functions: ``load_*`` and ``save_*``.

Their bodies are the legacy JSON file implementation (the on-disk format of
DESIGN.md), written the way the legacy path should have been: atomic writes,
an advisory lock around every read-modify-write, validated agent names.  They
live by entity group in the stores layer, as the SQL store's do
(:mod:`federation.stores.file_messages`, ``file_delivery``, ``file_history``,
``file_nodes``, ``file_polls``, ``file_sessions``, ``file_tasks``), each taking
the tree it works on; this module binds them to the configured root's tree.

This module knows nothing about databases or rollout phases.  The transition
shim (:mod:`shim`) is installed on it by one line in ``federation/__init__.py``
and routes each function to the files, the database or both.  This module is the
file store: it implements the ``Store`` protocol (:mod:`federation.stores.protocol`) function
for function, and the SQL store (:class:`federation.stores.sqlstore.SqlStore`) implements
it method for method.  Callers must call through the module
(``core.save_vote(...)``), never ``from federation.core import save_vote``, so
that they always reach the installed wrapper.  The bodies never call this
module's public names (which the shim may have wrapped): one body calls another
directly, inside its own store module.

``SHIM_SPEC`` describes each function to the shim: whether it reads or writes,
which file lock a dual-write holds across both sides, how a record is keyed
for mismatch events.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Callable

from . import config
from .domain.entities import POLLS_LOCK, TASKS_LOCK, inbox_lock, node_lock, session_lock
from .errors import FileStorageError
from .stores import file_delivery as _delivery
from .stores import file_history as _history
from .stores import file_messages as _messages
from .stores import file_nodes as _nodes
from .stores import file_polls as _polls
from .stores import file_sessions as _sessions
from .stores import file_tasks as _tasks
from .stores.files import Tree, locked


def tree() -> Tree:
    """The legacy file tree of the configured root."""
    root = config.settings().root
    cached = _tree_cache.get(root)
    if cached is None:
        cached = _tree_cache[root] = Tree(root)
    return cached


_tree_cache: dict[Path, Tree] = {}


def file_lock(name: str):
    """The advisory lock *name* of the configured root (re-entrant per thread)."""
    return locked(tree(), name)


# ---------------------------------------------------------------------------
# messages (federation.stores.file_messages)


def save_message(message: dict) -> None:
    """Deliver *message* into its recipient's inbox."""
    _messages.save_message(tree(), message)


def save_messages(messages: list[dict]) -> None:
    """Deliver several messages (a broadcast).  Legacy: one file per message, each atomic on its own."""
    _messages.save_messages(tree(), messages)


def load_inbox(agent: str) -> list[dict]:
    """The unread messages of *agent*, oldest first (nothing is claimed)."""
    return _messages.load_inbox(tree(), agent)


def claim_inbox(agent: str, ids: list[str] | None = None, read_at: str | None = None) -> list[dict]:
    """Claim the unread messages of *agent* (all, or only *ids*), oldest first: read and deleted under the
    inbox lock (the file side keeps no read receipt: *read_at* is the database's)."""
    return _messages.claim_inbox(tree(), agent, ids)


def save_keyed_messages(messages: list[dict], key: str) -> list[str]:
    """Deliver *messages* (one sender) under the sender's idempotency *key*, unless the key was used: then
    nothing is written and the ids of the first send are returned."""
    return _messages.save_keyed_messages(tree(), messages, key)


# ---------------------------------------------------------------------------
# delivery with leases and acknowledgements (issue 19; federation.stores.file_delivery)


def lease_inbox(agent: str, lease_until: str, now: str, limit: int | None = None, max_attempts: int = 5,
                ids: list[str] | None = None) -> list[dict]:
    """Lease *agent*'s deliverable messages (all, or only *ids*), oldest first, until *lease_until*; a lease
    over after *max_attempts* deliveries moves the message to dead/ instead."""
    return _delivery.lease_inbox(tree(), agent, lease_until, now, limit, max_attempts, ids)


def ack_messages(agent: str, ids: list[str], read_at: str) -> list[dict]:
    """Acknowledge *agent*'s delivered messages among *ids* (leased or dead): the ones acknowledged now."""
    return _delivery.ack_messages(tree(), agent, ids, read_at)


def load_dead_letters(agent: str | None, now: str, max_attempts: int = 5) -> list[dict]:
    """Messages delivered *max_attempts* times, never acknowledged (of *agent*, or of every agent)."""
    t = tree()
    agents = [agent] if agent is not None else _nodes.load_agents(t)
    return _delivery.load_dead_letters(t, agents, now, max_attempts)


# ---------------------------------------------------------------------------
# the message history and sent messages: in memory in phase 1 (federation.stores.file_history)


def save_history(direction: str, messages: list[dict]) -> None:
    """Record *messages* as sent or received in the message history (in memory: lost on restart)."""
    _history.save_history(tree(), direction, messages)


def load_history(agent: str | None = None, limit: int = 100, before: tuple[str, str] | None = None) -> list[dict]:
    """The last *limit* history entries (of *agent*, if given, older than *before*), oldest first."""
    return _history.load_history(tree(), agent, limit, before)


def load_sent(agent: str, limit: int = 100, before: str | None = None) -> list[dict]:
    """The last *limit* messages *agent* sent (before message *before*), oldest first, ``read_at`` None."""
    return _history.load_sent(tree(), agent, limit, before)


# ---------------------------------------------------------------------------
# context, expertise, profiles, agents (federation.stores.file_nodes)


def load_context(agent: str) -> dict | None:
    return _nodes.load_context(tree(), agent)


def save_context(agent: str, text: str, updated_at: str) -> None:
    """Set the context text of *agent* (its heartbeat is kept)."""
    _nodes.save_context(tree(), agent, text, updated_at)


def save_heartbeat(agent: str, timestamp: str) -> None:
    """Record that *agent* is alive (its context text is kept)."""
    _nodes.save_heartbeat(tree(), agent, timestamp)


def load_expertise(agent: str) -> dict | None:
    return _nodes.load_expertise(tree(), agent)


def save_expertise(agent: str, domains: list[str], updated_at: str) -> None:
    """Replace the expertise domains of *agent*; an empty list removes them."""
    _nodes.save_expertise(tree(), agent, domains, updated_at)


def load_profile(agent: str) -> dict | None:
    return _nodes.load_profile(tree(), agent)


def save_profile(agent: str, default_role: str | None, traits: dict | None, updated_at: str) -> None:
    """Set the profile of *agent*; a ``None`` field keeps its current value."""
    _nodes.save_profile(tree(), agent, default_role, traits, updated_at)


def load_agents() -> list[str]:
    """Every agent with context, expertise, a profile or an inbox."""
    return _nodes.load_agents(tree())


def load_experts(domain: str) -> list[str]:
    """Agents that list *domain* among their expertise."""
    return _nodes.load_experts(tree(), domain)


def load_agent_states() -> list[dict]:
    """Every known agent's ``{"agent","text","last_heartbeat"}`` by name (None where it has no context)."""
    return _nodes.load_agent_states(tree())


def load_agents_by_role(role: str) -> list[str]:
    """Agents whose profile's ``default_role`` is *role*, by name."""
    return _nodes.load_agents_by_role(tree(), role)


# ---------------------------------------------------------------------------
# polls (federation.stores.file_polls)


def load_polls() -> dict[str, dict]:
    """Every poll, keyed by id (``shared/polls.json``)."""
    return _polls.load_polls(tree())


def save_polls(polls: dict[str, dict]) -> None:
    """Write the whole polls document (legacy).  Through the shim, a delta."""
    _polls.save_polls(tree(), polls)


def load_poll(poll_id: str) -> dict | None:
    return _polls.load_poll(tree(), poll_id)


def save_poll(poll: dict) -> None:
    """Create a poll; a poll with the same id is a conflict."""
    _polls.save_poll(tree(), poll)


def save_vote(poll_id: str, voter: str, option: str, voted_at: str) -> None:
    """Record *voter*'s vote (replacing an earlier one) on an open poll."""
    _polls.save_vote(tree(), poll_id, voter, option, voted_at)


def save_poll_status(poll_id: str, agent: str, status: str) -> None:
    """Close a poll (only its creator may); closing a closed poll changes nothing."""
    _polls.save_poll_status(tree(), poll_id, agent, status)


def load_polls_page(status: str | None = None, limit: int | None = None, after: str | None = None) -> list[dict]:
    """Polls (with *status*, if given) oldest first, after the poll *after* (of any status), at most *limit*."""
    return _polls.load_polls_page(tree(), status, limit, after)


def load_open_polls(agent: str, limit: int) -> list[dict]:
    """The oldest *limit* open polls that *agent* has not voted on."""
    return _polls.load_open_polls(tree(), agent, limit)


# ---------------------------------------------------------------------------
# sessions (federation.stores.file_sessions)


def load_session(session_id: str) -> dict | None:
    return _sessions.load_session(tree(), session_id)


def load_sessions() -> dict[str, dict]:
    """Every session, keyed by id."""
    return _sessions.load_sessions(tree())


def save_session(session: dict) -> None:
    """Create a session; one with the same id is a conflict."""
    _sessions.save_session(tree(), session)


def save_role(session_id: str, agent: str, role: str, subtask: str | None, assigned_at: str) -> None:
    _sessions.save_role(tree(), session_id, agent, role, subtask, assigned_at)


def save_artifact(session_id: str, artifact_type: str, path: str, attached_at: str) -> None:
    _sessions.save_artifact(tree(), session_id, artifact_type, path, attached_at)


def save_review(
    session_id: str, artifact_type: str, reviewer: str, status: str, comments: str | None, reviewed_at: str
) -> None:
    _sessions.save_review(tree(), session_id, artifact_type, reviewer, status, comments, reviewed_at)


def save_session_phase(session_id: str, phase: str, updated_at: str) -> None:
    _sessions.save_session_phase(tree(), session_id, phase, updated_at)


def load_sessions_page(limit: int | None = None, after: str | None = None) -> list[dict]:
    """Sessions oldest first, after the session *after*, at most *limit*."""
    return _sessions.load_sessions_page(tree(), limit, after)


def load_roles(agent: str) -> list[dict]:
    """*agent*'s roles: ``{"session_id","title","role","subtask"}``, sessions oldest first."""
    return _sessions.load_roles(tree(), agent)


# ---------------------------------------------------------------------------
# the task registry (issue 28): shared/tasks/{id}.json; the bodies are federation.stores.file_tasks'


def save_task(task: dict) -> None:
    """Create a task; one with the same id is a conflict."""
    _tasks.save_task(tree(), task)


def load_task(task_id: str) -> dict | None:
    """The task *task_id* as stored (its last claim kept), or None."""
    return _tasks.load_task(tree(), task_id)


def claim_task(agent: str, lease_until: str, now: str, ids: list[str] | None = None) -> dict | None:
    """Lease to *agent* the oldest task it may take at *now* (or exactly *ids*), until *lease_until*."""
    return _tasks.claim_task(tree(), agent, lease_until, now, ids)


def save_task_result(agent: str, task_id: str, result: Any, now: str) -> dict:
    """Complete the task *agent* holds with *result*."""
    return _tasks.save_task_result(tree(), agent, task_id, result, now)


def save_task_release(agent: str, task_id: str, now: str) -> None:
    """Give back the task *agent* holds: open again."""
    _tasks.save_task_release(tree(), agent, task_id, now)


def load_tasks_page(status: str | None = None, assignee: str | None = None, limit: int | None = None,
                    after: str | None = None, now: str = "") -> list[dict]:
    """Tasks oldest first (with *status* as seen at *now*, of *assignee*), after *after*, at most *limit*."""
    return _tasks.load_tasks_page(tree(), status, assignee, limit, after, now)


# ---------------------------------------------------------------------------
# what the shim needs to know about each function (see shim.Spec)


def _agent_lock(lock):
    return lambda agent, *a, **k: lock(agent)


def _session_lock(session_id, *a, **k):
    return session_lock(session_id)


def _polls_lock(*a, **k):
    return POLLS_LOCK


def _tasks_lock(*a, **k):
    return TASKS_LOCK


def _first_arg(value, *a, **k):
    return str(value)


SHIM_SPEC: dict[str, dict[str, Any]] = {
    # messages
    "save_message": dict(entity="messages", lock=lambda m, *a, **k: inbox_lock(m["recipient"]),
                         key=lambda m, *a, **k: m["id"]),
    "load_inbox": dict(entity="messages", lock=_agent_lock(inbox_lock), records="id"),
    "claim_inbox": dict(entity="messages", lock=_agent_lock(inbox_lock), records="id",
                        mirror=lambda result, args, kwargs: (
                            args[:1], {**kwargs, "ids": [m["id"] for m in result]})),
    # delivery (issue 19): the other side leases exactly what the authoritative side leased
    "lease_inbox": dict(entity="messages", lock=_agent_lock(inbox_lock), records="id",
                        mirror=lambda result, args, kwargs: (
                            args[:1], {**dict(zip(("lease_until", "now", "limit", "max_attempts"), args[1:5])),
                                       **kwargs, "ids": [m["id"] for m in result], "limit": None})),
    "ack_messages": dict(entity="messages", lock=_agent_lock(inbox_lock), records="id"),
    "load_dead_letters": dict(entity="messages", records="id"),
    # an idempotent send: the other side writes only what the authoritative side wrote (nothing when the key
    # was used); the recipients' inbox locks, as a broadcast (the file side takes the sender's key lock
    # inside them; the database side locks the key in its transaction)
    "save_keyed_messages": dict(
        entity="messages",
        lock=lambda ms, *a, **k: sorted({inbox_lock(m["recipient"]) for m in ms}),
        key=lambda ms, key=None, *a, **k: f"{ms[0]['sender'] if ms else ''}:{key}",
        mirror=lambda result, args, kwargs: (
            ([m for m in args[0] if m["id"] in set(result)], *args[1:]), kwargs)),
    "save_history": dict(entity="message_history", files=False),
    "load_history": dict(entity="message_history", files=False),
    # context, expertise, profiles
    "load_context": dict(entity="context", lock=_agent_lock(node_lock), key=_first_arg),
    "save_context": dict(entity="context", lock=_agent_lock(node_lock), key=_first_arg),
    "save_heartbeat": dict(entity="context", lock=_agent_lock(node_lock), key=_first_arg),
    "load_expertise": dict(entity="expertise", lock=_agent_lock(node_lock), key=_first_arg),
    "save_expertise": dict(entity="expertise", lock=_agent_lock(node_lock), key=_first_arg),
    "load_profile": dict(entity="profiles", lock=_agent_lock(node_lock), key=_first_arg),
    "save_profile": dict(entity="profiles", lock=_agent_lock(node_lock), key=_first_arg),
    "load_agents": dict(entity="agents"),
    "load_experts": dict(entity="expertise", key=_first_arg),
    # polls
    "load_polls": dict(entity="polls", lock=_polls_lock, records="dict", document="polls"),
    "save_polls": dict(entity="polls", lock=_polls_lock, document="polls"),
    "load_poll": dict(entity="polls", lock=_polls_lock, key=_first_arg),
    "save_poll": dict(entity="polls", lock=_polls_lock, key=lambda p, *a, **k: p["id"]),
    "save_vote": dict(entity="votes", lock=_polls_lock, key=_first_arg),
    "save_poll_status": dict(entity="polls", lock=_polls_lock, key=_first_arg),
    # sessions
    "load_sessions": dict(entity="sessions", records="dict"),
    "load_session": dict(entity="sessions", lock=_session_lock, key=_first_arg),
    "save_session": dict(entity="sessions", lock=lambda s, *a, **k: _session_lock(s["id"]),
                         key=lambda s, *a, **k: s["id"]),
    "save_role": dict(entity="session_roles", lock=_session_lock, key=_first_arg),
    "save_artifact": dict(entity="session_artifacts", lock=_session_lock, key=_first_arg),
    "save_review": dict(entity="session_reviews", lock=_session_lock, key=_first_arg),
    "save_session_phase": dict(entity="sessions", lock=_session_lock, key=_first_arg),
    # what an agent reads every tick (issue 11)
    # poll reads hold the polls lock across both sides, as load_polls does, so a vote cannot land between them
    "load_polls_page": dict(entity="polls", lock=_polls_lock, records="id"),
    "load_sessions_page": dict(entity="sessions", records="id"),
    "load_open_polls": dict(entity="polls", lock=_polls_lock, records="id"),
    "load_roles": dict(entity="session_roles", records="session_id"),
    # every agent's context changes on every tick of the fleet and no one lock covers them all:
    # compare who is known; each context itself is compared by load_context under its node lock
    "load_agent_states": dict(entity="context", records="agent", ignore=("text", "last_heartbeat")),
    "load_agents_by_role": dict(entity="profiles"),
    # a broadcast holds every recipient's inbox lock across both sides (in name order: no deadlock)
    "save_messages": dict(entity="messages", lock=lambda ms, *a, **k: sorted({inbox_lock(m["recipient"]) for m in ms}),
                          key=lambda ms, *a, **k: ",".join(m["id"] for m in ms[:3])),
    # read receipts exist only in the database (phase 1: this process's sent messages, no receipts)
    "load_sent": dict(entity="messages", files=False),
    # the task registry: every task write holds the tasks lock across both sides; the other side of a claim
    # takes exactly the task the authoritative side took (or none)
    "save_task": dict(entity="tasks", lock=_tasks_lock, key=lambda task, *a, **k: task["id"]),
    "load_task": dict(entity="tasks", lock=_tasks_lock, key=_first_arg),
    "claim_task": dict(entity="tasks", kind="write", lock=_tasks_lock, key=_first_arg,
                       mirror=lambda result, args, kwargs: (
                           args[:1], {**dict(zip(("lease_until", "now"), args[1:3])), **kwargs,
                                      "ids": [result["id"]] if result else []})),
    "save_task_result": dict(entity="tasks", lock=_tasks_lock, key=lambda agent, task_id, *a, **k: task_id),
    "save_task_release": dict(entity="tasks", lock=_tasks_lock, key=lambda agent, task_id, *a, **k: task_id),
    "load_tasks_page": dict(entity="tasks", lock=_tasks_lock, records="id"),
}


# ---------------------------------------------------------------------------
# Every file-side failure reaches a caller typed: the helpers of _files raise
# FileStorageError naming the file; this net catches what remains (a folder
# listing refused, say), so that no bare OSError escapes the API.


def _typed_file_errors(fn):
    @functools.wraps(fn)
    def call(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except OSError as exc:
            raise FileStorageError.wrap(exc, None, "access") from exc

    return call


for _name in SHIM_SPEC:
    globals()[_name] = _typed_file_errors(globals()[_name])
del _name

#: The file side as this module defines it, for a read that is not an agent's call (an operator's count of
#: dead letters): the shim replaces the module's names when it is installed, never these.
FILE_SIDE: dict[str, Callable[..., Any]] = {_name: globals()[_name] for _name in SHIM_SPEC}
