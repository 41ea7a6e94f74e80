"""Every agent's dead letters, counted for the operator (doctor, the dashboard, ``/metrics``).

Read straight from the store that serves a phase, not as an agent's call: the public
``messaging.dead_letter_summary`` and ``doctor`` (a layer that must not reach up to the
public API) both use :func:`dead_letter_summary`, and hand it the file side's reader
(``core.FILE_SIDE["load_dead_letters"]``: the file store sits above this layer).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Callable

from .. import config
from ..domain import clock as _clock

__all__ = ["dead_letter_summary"]


def dead_letter_summary(phase: int, *, read_files: Callable[[str | None, str, int], list[dict]],
                        settings: config.Settings) -> dict:
    """Every agent's dead letters on the side that serves *phase*:
    ``{"count", "oldest_dead_at", "oldest_age_s"}``.

    *settings*: the federation read, its database in phases 3-4, its files in phases 1-2;
    *read_files(agent, now, max_attempts)*: the file side's dead letters (phases 1-2), read as they are,
    not through the shim (an operator's count is not an agent's call), while serving *settings* (the file
    store reads the root of the federation served)."""
    now, maximum = _clock.now(), config.max_attempts()
    if phase >= 3:
        from .sqlstore import get_store

        letters = get_store(settings).load_dead_letters(None, now, maximum)
    else:
        with config.serving(settings):
            letters = read_files(None, now, maximum)
    oldest = min((m["dead_at"] for m in letters if m.get("dead_at")), default=None)
    age = None
    if oldest is not None:
        age = max(0.0, (datetime.now(timezone.utc) - datetime.fromisoformat(oldest)).total_seconds())
    return {"count": len(letters), "oldest_dead_at": oldest, "oldest_age_s": age}
