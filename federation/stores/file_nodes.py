"""Each agent's node documents on the legacy file tree: context, expertise and profile under
``nodes/{agent}/``, and who the agents are.

The bodies of :mod:`federation.core`'s node functions (``core`` binds them to its tree; the shim wraps
``core``'s names).  A change of a node document holds the agent's node lock.  An agent is a folder of
``nodes/`` that holds one of the legacy layout's agent entries (context, expertise, profile, inbox); a link
there is not an agent's folder: nothing is read through it.
"""

from __future__ import annotations

from typing import Any, Callable

from ..domain import validate as _validate
from ..domain.entities import CONTEXT, PROFILES, Entity, node_lock
from ..domain.layout import AGENT_ENTRIES
from ..errors import CorruptFileError
from .file_reads import listed
from .files import Tree, atomic_write_json, list_dir, locked, read_json, remove

__all__ = ["load_context", "save_context", "save_heartbeat", "load_expertise", "save_expertise", "load_profile",
           "save_profile", "load_agents", "load_experts", "load_agent_states", "load_agents_by_role"]


def _node_record(t: Tree, entity: Entity, agent: str) -> dict | None:
    """*agent*'s record of the node document *entity* (context or profile), or None when it has none."""
    data = read_json(t.node_file(entity.document, agent), root=t.root)
    if data is None:
        return None
    return entity.record(data, given={"agent": agent})


def _update_node(t: Tree, entity: Entity, agent: str, change: Callable[[dict], Any]) -> None:
    """Change *agent*'s node document *entity* under the node lock (a missing one starts from the defaults)."""
    with locked(t, node_lock(agent)):
        doc = _node_record(t, entity, agent) or entity.record({}, given={"agent": agent})
        change(doc)
        atomic_write_json(t.node_file(entity.document, agent), doc, root=t.root)


def load_context(t: Tree, agent: str) -> dict | None:
    return _node_record(t, CONTEXT, agent)


def save_context(t: Tree, agent: str, text: str, updated_at: str) -> None:
    """Set the context text of *agent* (its heartbeat is kept)."""
    _update_node(t, CONTEXT, agent, lambda doc: doc.update(text=text, updated_at=updated_at))


def save_heartbeat(t: Tree, agent: str, timestamp: str) -> None:
    """Record that *agent* is alive (its context text is kept)."""
    _update_node(t, CONTEXT, agent, lambda doc: doc.update(last_heartbeat=timestamp))


def load_expertise(t: Tree, agent: str) -> dict | None:
    data = read_json(t.expertise_file(agent), root=t.root)
    if data is None:
        return None
    domains = data.get("domains") or []
    if not domains:
        return None
    return {"agent": agent, "domains": sorted(domains), "updated_at": data.get("updated_at")}


def save_expertise(t: Tree, agent: str, domains: list[str], updated_at: str) -> None:
    """Replace the expertise domains of *agent*; an empty list removes them."""
    path = t.expertise_file(agent)
    if not domains:
        remove(path, root=t.root)
        return
    atomic_write_json(path, {"agent": agent, "domains": sorted(domains), "updated_at": updated_at}, root=t.root)


def load_profile(t: Tree, agent: str) -> dict | None:
    return _node_record(t, PROFILES, agent)


def save_profile(t: Tree, agent: str, default_role: str | None, traits: dict | None, updated_at: str) -> None:
    """Set the profile of *agent*; a ``None`` field keeps its current value."""

    def change(doc: dict) -> None:
        if default_role is not None:
            doc["default_role"] = default_role
        if traits is not None:
            doc["traits"] = traits
        doc["updated_at"] = updated_at

    _update_node(t, PROFILES, agent, change)


def load_agents(t: Tree) -> list[str]:
    """Every agent with context, expertise, a profile or an inbox."""
    nodes = t.nodes
    out = []
    for name in listed(t, nodes):
        try:  # a link is not an agent's folder: nothing is read through it
            entries = list_dir(nodes / name, root=t.root)
        except CorruptFileError:
            continue
        if not AGENT_ENTRIES.isdisjoint(entries):
            out.append(name)
    return sorted(out)


def load_experts(t: Tree, domain: str) -> list[str]:
    """Agents that list *domain* among their expertise."""
    out = []
    for agent in load_agents(t):
        doc = load_expertise(t, agent)
        if doc and domain in doc["domains"]:
            out.append(agent)
    return out


def load_agent_states(t: Tree) -> list[dict]:
    """Every known agent's ``{"agent","text","last_heartbeat"}`` by name (None where it has no context)."""
    out = []
    for agent in load_agents(t):
        ctx = load_context(t, agent) if _validate.is_agent(agent) else None
        out.append({"agent": agent, "text": ctx["text"] if ctx else None,
                    "last_heartbeat": ctx["last_heartbeat"] if ctx else None})
    return out


def load_agents_by_role(t: Tree, role: str) -> list[str]:
    """Agents whose profile's ``default_role`` is *role*, by name."""
    out = []
    for agent in load_agents(t):
        profile = load_profile(t, agent) if _validate.is_agent(agent) else None
        if profile and profile["default_role"] == role:
            out.append(agent)
    return out
