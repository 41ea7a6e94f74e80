"""Each rollout phase's authoritative side, and the one repair that respects it (issue 15).

The rule alone: which phase the fleet is in is the rollout's question (``rollout._default.fleet_phase``),
asked by the caller (the CLI) and handed to ``sync`` and ``archive-legacy``.
"""

from __future__ import annotations

__all__ = ["AUTHORITY", "authority", "repair_command"]

#: the side whose content wins in each phase: files first in 1-2, the database first in 3-4
AUTHORITY = {1: "files", 2: "files", 3: "db", 4: "db"}


def authority(phase: int) -> str:
    """``"files"`` or ``"db"``: the side that is authoritative in *phase*."""
    return AUTHORITY[phase]


def repair_command(phase: int) -> str:
    """The one ``sync`` that is safe in *phase*: it rewrites the side that is not authoritative."""
    return "federation sync --to " + ("db" if AUTHORITY[phase] == "files" else "files")
