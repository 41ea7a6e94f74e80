"""The phase of a process that neither its environment nor the live flag pins, and the fleet's phase.

Phase 3 is the default, except on an upgrade not done yet: legacy files
beside a database that was never backfilled from them (or none at all).
There the default is phase 1, the files, so that agents started on an
existing tree before anyone set the flag keep working as they did.  A
database that cannot say whether it was backfilled (no schema, unreachable,
unreadable) on a root with legacy data means phase 1 too: the files are
what is known to hold the federation, never a database nobody could read.
Each phase's authoritative side is the domain's rule (:mod:`federation.domain.authority`).
"""

from __future__ import annotations

from pathlib import Path

from .. import config
from ..errors import FederationError
from . import _flag


def fleet_phase(settings: config.Settings) -> int:
    """The phase whose authority a repair respects: the live flag's; without a flag, this process's
    environment pin, else the root's default (what processes pinned the same way, or unpinned, run).

    *settings*: the federation asked."""
    s = settings
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
    exists = database_exists(s, ask_server=True)  # has the schema been created in it?
    if not exists:
        return legacy, False, None
    from ..stores.sqlstore import get_store

    return legacy, True, get_store(s).meta("backfilled_at")


def needs_backfill(s: config.Settings) -> bool:
    """True when legacy files exist and the database never received them."""
    legacy, _, at = backfill_state(s)
    return legacy and at is None


def default_phase(s: config.Settings) -> int:
    """The phase an unpinned process runs without a flag: 1 on an un-backfilled legacy tree, else 3.

    When the database cannot answer (unreachable, unreadable), 1 on a root with legacy data: never
    phase 3 on a database nobody could read.
    """
    try:
        return 1 if needs_backfill(s) else _flag.DEFAULT_PHASE
    except Exception:  # noqa: BLE001 - a database that cannot answer: decided from the files alone
        return unanswered_phase(s)


def unanswered_phase(s: config.Settings) -> int:
    """The default when the database cannot say whether it was backfilled: 1 (the files) on a root with
    legacy data, else 3 (a new federation, which has only the database)."""
    from ..stores.files import Tree, has_legacy_data

    try:
        legacy = has_legacy_data(Tree(s.root))
    except (OSError, FederationError):
        legacy = True  # the root cannot be listed either: the files are still the safer answer
    return 1 if legacy else _flag.DEFAULT_PHASE


def current_phase(root: Path, ask_db: bool = True, *,
                  settings: config.Settings) -> tuple[int, _flag.Flag | None, str | None]:
    """(the phase the unpinned fleet is in, the flag or None, why the flag is unreadable or None).

    Without a flag, the default of the root (phase 1 on an un-backfilled legacy tree, else 3);
    *ask_db* False decides that from the files alone (a step that must work with the database down).
    An unreadable flag: the last phase its history recorded, else 1 on a root with legacy data, else 3.
    *settings*: the federation whose database decides the default.
    """
    try:
        flag = _flag.read_flag(root)
    except _flag.FlagError as exc:
        recorded = _flag.last_recorded_phase(root)
        if recorded is None:  # nothing says what the flag held: the files on a root with legacy data
            recorded = unanswered_phase(settings)
        return recorded, None, str(exc)
    return (flag.phase if flag else _unflagged_phase(ask_db, settings)), flag, None


def _unflagged_phase(ask_db: bool, settings: config.Settings) -> int:
    s = settings
    if not ask_db and s.db_url:
        return _flag.DEFAULT_PHASE  # a server is not asked (it may be down): only the flag can say 1 there
    # a SQLite file is asked (no server to wait on): one without the schema, or unreadable, is no backfill
    return default_phase(s)  # a database that cannot answer: phase 1 on legacy data (the processes' answer too)
