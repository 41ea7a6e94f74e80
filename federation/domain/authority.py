"""Each rollout phase's authoritative side, and the one repair that respects it (issue 15).

The rule alone: which phase the fleet is in is the rollout's question (``rollout._default.fleet_phase``),
asked by the caller (the CLI) and handed to ``sync`` and ``archive-legacy``.
"""

from __future__ import annotations

__all__ = ["AUTHORITY", "authority", "repair_command", "restore_command"]

#: the side whose content wins in each phase: files first in 1-2, the database first in 3-4
AUTHORITY = {1: "files", 2: "files", 3: "db", 4: "db"}


def authority(phase: int) -> str:
    """``"files"`` or ``"db"``: the side that is authoritative in *phase*."""
    return AUTHORITY[phase]


def repair_command(phase: int) -> str:
    """The one ``sync`` that is safe in *phase*: it rewrites the side that is not authoritative."""
    return "federation sync --to " + ("db" if AUTHORITY[phase] == "files" else "files")


def restore_command(phase: int, entities: list[str] | tuple[str, ...] = ()) -> str:
    """What restores legacy documents that could not be read (unknown), safely in *phase*.

    Never a command that acts on the unknown document as if it were empty, never "move it out of the root"
    (in phases 1-2 the files are authoritative: a missing document declares its records gone).  From the
    phase 2 on the database holds every write made through the shim: the document is rebuilt from it,
    scoped to its *entities* (over the authoritative files in phase 2 only with ``--force --reason``,
    recorded).  In phase 1 the database is not written: only a copy of the file (a backup) or a hand repair.
    """
    only = "".join(f" --only {name}" for name in entities)
    if phase == 1:
        return ("restore the file from a copy of the legacy tree, or repair its JSON by hand (phase 1 does "
                "not write the database, so it cannot rebuild it); never remove it, and do not sync until "
                "`federation report` reads it")
    command = f"federation sync --to files{only}"
    if AUTHORITY[phase] == "files":
        return (f"{command} --force --reason 'restore unreadable legacy documents from the database' "
                "(rebuilds just those documents from the database's copy), or restore them from a copy of the "
                "legacy tree")
    return command
