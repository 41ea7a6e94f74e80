"""The tools of an agent's public state: its context window, expertise and profile."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field

from ... import context
from ...domain import validate as v
from ._params import OtherAgent, _tool, _CONTENT_LIMIT


class ContextTools:
    """The tools of an agent's public state, acting as ``self.agent``."""

    agent: str

    # -- context ---------------------------------------------------------------------------------

    @_tool(idempotent=True)
    def set_context(
        self,
        text: Annotated[str, Field(description=(
            f"What you are working on, for other agents to read ({_CONTENT_LIMIT}; empty clears it)."))],
    ) -> dict[str, Any]:
        """Replace your context window text (what other agents see with get_context).

        Your heartbeat is kept. Returns {"ok": true}.
        """
        context.set_context(self.agent, text)
        return {"ok": True}

    @_tool(read_only=True)
    def get_context(
        self,
        agent: OtherAgent = None,
    ) -> dict[str, Any]:
        """Read an agent's context window (yours by default).

        Returns {"context": {"agent", "text", "last_heartbeat", "updated_at"}}
        or {"context": null} when that agent never set one.
        """
        return {"context": context.get_context(self.agent if agent is None else agent)}

    @_tool(idempotent=True)
    def heartbeat(self) -> dict[str, Any]:
        """Record that you are alive now (sets your last_heartbeat). Returns {"ok": true}."""
        context.heartbeat(self.agent)
        return {"ok": True}

    @_tool(read_only=True)
    def list_agents(self) -> dict[str, Any]:
        """Every agent known to the federation (with context, expertise, a profile or an inbox).

        Returns {"agents": [name, ...]} sorted by name.
        """
        return {"agents": context.list_agents()}

    # -- expertise -------------------------------------------------------------------------------

    @_tool(idempotent=True)
    def set_expertise(
        self,
        domains: Annotated[list[str], Field(description=(
            f"Your domains, e.g. [\"postgresql\", \"testing\"]: up to {v.MAX_DOMAINS} non-empty strings; "
            "duplicates are folded; [] clears your expertise."))],
    ) -> dict[str, Any]:
        """Replace your list of expertise domains (what find_experts searches).

        Returns {"domains": [...]}, sorted and without duplicates.
        """
        context.set_expertise(self.agent, domains)
        return {"domains": context.get_expertise(self.agent)}

    @_tool(read_only=True)
    def get_expertise(
        self,
        agent: OtherAgent = None,
    ) -> dict[str, Any]:
        """An agent's expertise domains (yours by default). Returns {"agent": str, "domains": [...]}."""
        name = self.agent if agent is None else agent
        return {"agent": name, "domains": context.get_expertise(name)}

    @_tool(read_only=True)
    def find_experts(
        self,
        domain: Annotated[str, Field(description="The exact domain to look for, e.g. \"postgresql\".")],
    ) -> dict[str, Any]:
        """Agents that list `domain` among their expertise (exact match).

        Returns {"domain": str, "agents": [name, ...]}; an empty list when nobody does.
        """
        return {"domain": domain, "agents": context.find_experts(domain)}

    # -- profiles --------------------------------------------------------------------------------

    @_tool(idempotent=True)
    def set_profile(
        self,
        default_role: Annotated[str | None, Field(description=(
            "The role you usually take, e.g. reviewer, implementer (at most 256 bytes); omit to keep it."))] = None,
        traits: Annotated[dict[str, Any] | None, Field(description=(
            f"A JSON object of traits, e.g. {{\"careful\": true}} ({_CONTENT_LIMIT} as JSON); "
            "replaces your traits; omit to keep them."))] = None,
    ) -> dict[str, Any]:
        """Set your profile. An argument you omit keeps its current value. Returns {"ok": true}."""
        context.set_profile(self.agent, default_role, traits)
        return {"ok": True}

    @_tool(read_only=True)
    def get_profile(
        self,
        agent: OtherAgent = None,
    ) -> dict[str, Any]:
        """An agent's profile (yours by default).

        Returns {"profile": {"agent", "default_role", "traits", "updated_at"}} or
        {"profile": null} when that agent has none.
        """
        return {"profile": context.get_profile(self.agent if agent is None else agent)}
