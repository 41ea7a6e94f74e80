"""The SQL store's nodes: each agent's context, heartbeat, expertise and profile, and who the agents are."""

from __future__ import annotations

import operator

from . import sqltext as _sql
from .database import Tx
from ..domain.entities import CONTEXT, PROFILES
from .sql_base import SqlPart

__all__ = ["NodesSql"]


class NodesSql(SqlPart):
    """One row (or set of rows) per agent."""

    # -- context, expertise, profiles ----------------------------------------
    def load_context(self, agent: str) -> dict | None:
        row = self.db.fetchone(_sql.select(CONTEXT, "agent = ?"), (agent,))
        return None if row is None else CONTEXT.from_row(row)

    def save_context(self, agent: str, text: str, updated_at: str) -> None:
        self.db.write(lambda tx: tx.execute(
            "INSERT INTO context (agent, text, updated_at) VALUES (?, ?, ?) ON CONFLICT (agent) DO UPDATE "
            "SET text = excluded.text, updated_at = excluded.updated_at", (agent, text, updated_at)))

    def save_heartbeat(self, agent: str, timestamp: str) -> None:
        self.db.write(lambda tx: tx.execute(
            "INSERT INTO context (agent, text, last_heartbeat) VALUES (?, '', ?) ON CONFLICT (agent) DO UPDATE "
            "SET last_heartbeat = excluded.last_heartbeat", (agent, timestamp)))

    def load_expertise(self, agent: str) -> dict | None:
        rows = self.db.fetchall(
            "SELECT domain, updated_at FROM expertise WHERE agent = ?", (agent,))
        if not rows:
            return None
        return {"agent": agent, "domains": sorted(r[0] for r in rows), "updated_at": max(r[1] or "" for r in rows)
                or None}

    def save_expertise(self, agent: str, domains: list[str], updated_at: str) -> None:
        def fn(tx: Tx) -> None:
            # a set of rows replaced as a whole: concurrent replacements must not interleave
            tx.dialect.lock(tx, f"expertise:{agent}")
            tx.execute("DELETE FROM expertise WHERE agent = ?", (agent,))
            tx.executemany("INSERT INTO expertise (agent, domain, updated_at) VALUES (?, ?, ?)",
                           [(agent, d, updated_at) for d in domains])

        self.db.write(fn)

    def load_profile(self, agent: str) -> dict | None:
        row = self.db.fetchone(_sql.select(PROFILES, "agent = ?"), (agent,))
        return None if row is None else PROFILES.from_row(row)

    def save_profile(self, agent: str, default_role: str | None, traits: dict | None, updated_at: str) -> None:
        encoded = None if traits is None else PROFILES.field("traits").encode(traits)
        self.db.write(lambda tx: tx.execute(
            "INSERT INTO profiles (agent, default_role, traits, updated_at) VALUES (?, ?, COALESCE(CAST(? AS TEXT), '{}'), ?) "
            "ON CONFLICT (agent) DO UPDATE SET "
            "default_role = COALESCE(excluded.default_role, profiles.default_role), "
            "traits = CASE WHEN CAST(? AS TEXT) IS NULL THEN profiles.traits ELSE excluded.traits END, "
            "updated_at = excluded.updated_at",
            (agent, default_role, encoded, updated_at, encoded)))

    def load_experts(self, domain: str) -> list[str]:
        rows = self.db.fetchall("SELECT agent FROM expertise WHERE domain = ?", (domain,))
        return sorted(r[0] for r in rows)

    # Every agent that received a message, without reading every message: a
    # "loose index scan" that jumps from one recipient to the next on the
    # recipient index (as many index look-ups as there are recipients).
    _KNOWN_AGENTS = (
        "WITH RECURSIVE r(name) AS ("
        "SELECT MIN(recipient) FROM messages UNION ALL "
        "SELECT (SELECT MIN(recipient) FROM messages WHERE recipient > r.name) FROM r WHERE r.name IS NOT NULL), "
        "known(agent) AS (SELECT name FROM r WHERE name IS NOT NULL UNION SELECT agent FROM context "
        "UNION SELECT agent FROM expertise UNION SELECT agent FROM profiles) ")

    def load_agents(self) -> list[str]:
        return sorted(r[0] for r in self.db.fetchall(self._KNOWN_AGENTS + "SELECT agent FROM known"))

    def load_agent_states(self) -> list[dict]:
        rows = self.db.fetchall(self._KNOWN_AGENTS + "SELECT k.agent, c.text, c.last_heartbeat, c.agent "
                                "FROM known k LEFT JOIN context c ON c.agent = k.agent")
        rows.sort(key=operator.itemgetter(0))
        return [{"agent": a, "text": (text or "") if has else None, "last_heartbeat": beat}
                for a, text, beat, has in rows]

    def load_agents_by_role(self, role: str) -> list[str]:
        return sorted(r[0] for r in self.db.fetchall("SELECT agent FROM profiles WHERE default_role = ?", (role,)))
