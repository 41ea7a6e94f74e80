"""What the shim needs from the federation: the phase, the SQL store, the file locks, the comparison."""

from __future__ import annotations

from typing import Callable

from . import config, core
from .domain.compare import record_diff
from .stores.protocol import Store


def env_mode() -> tuple[int, float]:
    """(phase, sample) from the environment alone: the behaviour before the live flag (benchmarks)."""
    s = config.settings()
    return (s.phase if s.use_db else 1), s.shadow_sample


#: The federation's answer to "which phase now?", the one the shim was last given (see hooks()).
_mode: Callable[[], tuple[int, float]] = env_mode


def phase() -> int:
    """The phase a call starting now is routed by: environment pin > live flag > phase 3 (as the shim sees it)."""
    return int(_mode()[0])


def candidate(phase: int) -> Store:
    """The SQL store the shim sends a call's database side to (the file side is ``core`` itself)."""
    from .stores.sqlstore import get_store

    store = get_store()
    # Create the schema before the first write of any side, so that a new
    # federation's database is known to need no backfill (its files come later).
    store.db.ensure_schema()
    store.ensure_root()  # a process that writes creates the root, also in phase 4 (which writes no file)
    if phase >= 3:
        store.ensure_backfilled()
    return store


def hooks(control: bool = True) -> dict:
    """The shim's hooks; *control*: the phase from the control plane (environment pin > live flag >
    phase 3) and every dual-phase call counted, else the phase from the environment only, nothing
    counted (the behaviour before the control plane; benchmarks compare the two)."""
    hooks = {"candidate": candidate, "mode": env_mode, "lock": core.file_lock, "spec": core.SHIM_SPEC,
             "observers": (), "differ": record_diff}  # the consistency report's comparison: both agree
    if control:
        from .rollout import RUNTIME, observe

        hooks.update(mode=RUNTIME.mode, observers=(observe,))
    global _mode
    _mode = hooks["mode"]
    return hooks
