"""Per-agent context windows, heartbeats, expertise and profiles."""

from __future__ import annotations

from .domain import validate as v
from . import core
from .domain import clock as _clock

__all__ = ["set_context", "get_context", "heartbeat", "set_expertise", "get_expertise", "find_experts",
           "set_profile", "get_profile", "list_agents"]


def set_context(agent: str, text: str) -> None:
    """Replace *agent*'s context window text (its heartbeat is kept)."""
    v.agent(agent)
    v.content(text, "text", allow_empty=True)
    core.save_context(agent, text, _clock.now())


def get_context(agent: str) -> dict | None:
    """``{"agent","text","last_heartbeat","updated_at"}`` or None."""
    v.agent(agent)
    return core.load_context(agent)


def heartbeat(agent: str) -> None:
    """Record that *agent* is alive now."""
    v.agent(agent)
    core.save_heartbeat(agent, _clock.now())


def set_expertise(agent: str, domains: list[str]) -> None:
    """Replace *agent*'s expertise domains (duplicates are folded; [] clears)."""
    v.agent(agent)
    items = v.string_list(domains, "domains", limit=v.MAX_DOMAINS, unique=False)
    for d in items:
        v.text(d, "domain", limit=256)
    core.save_expertise(agent, sorted(set(items)), _clock.now())


def get_expertise(agent: str) -> list[str]:
    v.agent(agent)
    doc = core.load_expertise(agent)
    return list(doc["domains"]) if doc else []


def find_experts(domain: str) -> list[str]:
    """Agents that list *domain* among their expertise, by name."""
    v.text(domain, "domain", limit=256)
    return core.load_experts(domain)


def set_profile(agent: str, default_role: str | None = None, traits: dict | None = None) -> None:
    """Set *agent*'s profile; an argument left as None keeps its current value."""
    v.agent(agent)
    if default_role is not None:
        v.text(default_role, "default_role", limit=256)
    if traits is not None:
        traits = v.json_object(traits, "traits")
    core.save_profile(agent, default_role, traits, _clock.now())


def get_profile(agent: str) -> dict | None:
    """``{"agent","default_role","traits","updated_at"}`` or None."""
    v.agent(agent)
    return core.load_profile(agent)


def list_agents() -> list[str]:
    """Every agent with context, expertise, a profile or an inbox, by name."""
    return core.load_agents()
