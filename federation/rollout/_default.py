"""The phase of a process that neither its environment nor the live flag pins, and the fleet's phase.

Phase 3 is the default, except on an upgrade not done yet: legacy files
beside a database that was never backfilled from them (or none at all).
There the default is phase 1, the files, so that agents started on an
existing tree before anyone set the flag keep working as they did.
Each phase's authoritative side is the domain's rule (:mod:`federation.domain.authority`).
"""

from __future__ import annotations

from pathlib import Path

from .. import config
from . import _flag


def fleet_phase(settings: config.Settings | None = None) -> int:
    """The phase whose authority a repair respects: the live flag's; without a flag, this process's
    environment pin, else the root's default (what processes pinned the same way, or unpinned, run).

    *settings*: the federation asked (default: the configured one)."""
    s = settings or config.settings()
    phase, flag, problem = current_phase(s.root, settings=s)
    if flag is None and problem is None and s.phase_pinned:
        return s.effective_phase
    return phase


def backfill_state(s: config.Settings) -> tuple[bool, bool, str | None]:
    """(legacy files exist, the database exists with its schema, when it was backfilled or None).

    Reads only: a SQLite file that does not exist is not created, nor a schema on a server.
    """
    from ..stores.database import database_exists
    from ..stores.files import Tree, has_legacy_data

    legacy = has_legacy_data(Tree(s.root))
    exists = database_exists(s, ask_server=True)  # a server database: has the schema been created in it?
    if not exists:
        return legacy, False, None
    from ..stores.sqlstore import get_store

    return legacy, True, get_store(s).meta("backfilled_at")


def needs_backfill(s: config.Settings) -> bool:
    """True when legacy files exist and the database never received them."""
    legacy, _, at = backfill_state(s)
    return legacy and at is None


def default_phase(s: config.Settings) -> int:
    """The phase an unpinned process runs without a flag: 1 on an un-backfilled legacy tree, else 3."""
    return 1 if needs_backfill(s) else _flag.DEFAULT_PHASE


def current_phase(root: Path, ask_db: bool = True, *,
                  settings: config.Settings | None = None) -> tuple[int, _flag.Flag | None, str | None]:
    """(the phase the unpinned fleet is in, the flag or None, why the flag is unreadable or None).

    Without a flag, the default of the root (phase 1 on an un-backfilled legacy tree, else 3);
    *ask_db* False decides that from the files alone (a step that must work with the database down).
    *settings*: the federation whose database decides the default (default: the configured one).
    """
    try:
        flag = _flag.read_flag(root)
    except _flag.FlagError as exc:
        recorded = _flag.last_recorded_phase(root)
        return (recorded if recorded is not None else _unflagged_phase(ask_db, settings)), None, str(exc)
    return (flag.phase if flag else _unflagged_phase(ask_db, settings)), flag, None


def _unflagged_phase(ask_db: bool, settings: config.Settings | None) -> int:
    s = settings or config.settings()  # only read when there is no flag, as before
    if not ask_db:
        from ..stores.files import Tree, has_legacy_data

        no_database = not s.db_url and not s.db_path.exists()
        return 1 if no_database and has_legacy_data(Tree(s.root)) else _flag.DEFAULT_PHASE
    try:
        return default_phase(s)
    except Exception:  # noqa: BLE001 - the database cannot be asked: the processes' own answer is phase 3 too
        return _flag.DEFAULT_PHASE
