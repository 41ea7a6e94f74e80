"""The rollout control plane: the live flag, the fleet, counted consistency, guarded steps.

``federation rollout set PHASE`` writes the live flag under
``$FEDERATION_ROOT/control/``; every process that is not pinned by
``FEDERATION_USE_DB`` / ``FEDERATION_PHASE`` in its environment follows it
within seconds.  Each process announces itself (the fleet) and counts the
shim's comparisons; :func:`status` merges what the fleet wrote.  Everything
here reads files only, so it works while the database is down.
"""

from __future__ import annotations

from ..config import Settings
from ._default import fleet_phase
from ._counts import BUCKET_SECONDS, LATENCY_BOUNDS_MS, MISMATCH_CAP
from ._flag import DEFAULT_PHASE, Flag, FlagError, check_phase, check_sample, read_flag, record_sync
from ._fleet import unsafe_mix
from ._guards import DEFAULT_MIN_COMPARISONS, DEFAULT_MIN_RATE, SetResult, current_phase, guards, set_phase
from ._guards import _unannounced_writers as unannounced_writers
from ._runtimes import call_mode, current_runtime, observe, runtime_for, runtimes
from ._status import consistency, counters, fleet, history, recent_mismatches, series, status, totals
# for the commands and the dashboard: what the CLI needs of the default phase and the log, the dashboard of the counts
from ._counts import HOUR, KEEP_SECONDS
from ._counts import maintain as maintain_counts
from ._default import needs_backfill
from ._log_summary import summarise_log
from ._status import counters_by_hour, merge_counters, points, status_document, summarise, tally
# the control folder's files, for the operations that keep theirs there (an operator's accepted files, restore's
# reading of the flag's history), and the timestamps and operator names those files record
from ._flag import history as flag_history
from ._io import append_line, control_dir, invalid_control_files, iso, parse_iso, read_lines, utcnow, who

__all__ = [
    "status", "series", "counters", "recent_mismatches", "guards", "unsafe_mix", "fleet", "history",
    "consistency", "totals", "set_phase", "SetResult", "current_phase", "fleet_phase", "read_flag", "record_sync", "Flag",
    "FlagError", "check_phase", "check_sample", "mode", "phase_in_effect", "announce_agent", "announce_adopted",
    "observe", "flush", "unannounced_writers",
    "DEFAULT_PHASE", "DEFAULT_MIN_RATE", "DEFAULT_MIN_COMPARISONS", "BUCKET_SECONDS", "LATENCY_BOUNDS_MS",
    "MISMATCH_CAP", "RUNTIME", "call_mode", "runtime_for",
    "HOUR", "KEEP_SECONDS", "maintain_counts", "needs_backfill", "summarise_log", "counters_by_hour",
    "merge_counters", "points", "status_document", "summarise", "tally",
    "flag_history", "append_line", "control_dir", "invalid_control_files", "iso", "parse_iso", "read_lines", "utcnow",
    "who",
]


def mode(settings: Settings) -> tuple[int, float]:
    """(phase, shadow sample) of this process now in the federation of *settings*: environment pin > live
    flag > phase 3."""
    return runtime_for(settings).mode(settings)


def phase_in_effect(settings: Settings) -> dict:
    """This process's phase, sample and where the phase comes from (``env``, ``flag`` or ``default``), in
    the federation of *settings*."""
    runtime = runtime_for(settings)
    phase, sample = runtime.mode(settings)
    return {"phase": phase, "sample": sample, "source": runtime.source, "flag_error": runtime.flag_problem()}


def announce_agent(agent: str, settings: Settings) -> None:
    """Say which agent this process serves (the MCP server calls it) and announce the process now."""
    runtime_for(settings).announce_agent(agent, settings)


def announce_adopted(module: str, adopted: bool = True, *, settings: Settings) -> None:
    """Say that this process runs *module* adopted with :mod:`federation.adopt` (its fleet entry lists it,
    and ``rollout set 4`` is refused while it lives); ``adopted=False`` withdraws it."""
    runtime_for(settings).announce_adopted(module, adopted, settings)


def flush() -> None:
    """Write this process's counts and recent mismatches now, in every federation it serves (they are also
    written every few seconds)."""
    for runtime in runtimes():
        runtime.flush()


# observe(observation): the shim's observer that counts one dual-phase call (give it to shim.install's
# observers, as federation's own wiring and federation.adopt do)


def __getattr__(name: str):
    """``RUNTIME``: the control-plane runtime of the federation this process served last."""
    if name == "RUNTIME":
        return current_runtime()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
