"""Each rollout phase's authoritative side, and the one repair that respects it (issue 15).

The rule alone: which phase the fleet is in is the rollout's question (``rollout._default.fleet_phase``),
asked by the caller (the CLI) and handed to ``sync`` and ``archive-legacy``.
"""

from __future__ import annotations

__all__ = ["AUTHORITY", "authority", "repair_command", "restore_command", "restore_advice"]

#: the side whose content wins in each phase: files first in 1-2, the database first in 3-4
AUTHORITY = {1: "files", 2: "files", 3: "db", 4: "db"}


def authority(phase: int) -> str:
    """``"files"`` or ``"db"``: the side that is authoritative in *phase*."""
    return AUTHORITY[phase]


def repair_command(phase: int) -> str:
    """The one ``sync`` that is safe in *phase*: it rewrites the side that is not authoritative."""
    return "federation sync --to " + ("db" if AUTHORITY[phase] == "files" else "files")


def restore_command(phase: int, entities: list[str] | tuple[str, ...] = ()) -> str | None:
    """The command that restores legacy documents that could not be read (unknown), safe in *phase*; None
    in phase 1, where only a copy of the file or a hand repair can (the database is not written).

    From phase 2 on the database holds every write made through the shim: a ``sync --to files`` scoped to
    the documents' *entities* rebuilds just those documents from it (over the authoritative files of phase
    2 only with ``--force --reason``, recorded).  Never a command that acts on the unknown document as if it
    were empty, never "move it out of the root" (in phases 1-2 a missing document declares its records gone).
    """
    if phase == 1:
        return None
    command = "federation sync --to files" + "".join(f" --only {name}" for name in entities)
    if AUTHORITY[phase] == "files":
        command += " --force --reason 'restore unreadable legacy documents from the database'"
    return command


def restore_advice(phase: int, entities: list[str] | tuple[str, ...] = ()) -> str:
    """:func:`restore_command` as advice for people: the command in backticks, and the alternative."""
    command = restore_command(phase, entities)
    if command is None:
        return ("restore the file from a copy of the legacy tree, or repair its JSON by hand (phase 1 does not "
                "write the database, so nothing can rebuild it); never remove it, and sync nothing until "
                "`federation report` reads it")
    return f"`{command}` rebuilds just those documents from the database, or restore them from a copy of the legacy tree"
