"""What ``federation rollout status`` shows, and the series and counters the dashboard draws.

Read-only, and readable while the database is down: everything comes from
``control/``.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Iterable

from .. import config
from ..errors import ConfigError
from . import _counts, _fleet, _flag, _io

#: the default window of the counted consistency
DEFAULT_WINDOW = timedelta(hours=24)
#: how many of the latest flag changes ``status`` includes
HISTORY_LIMIT = 100


def _root(settings: config.Settings) -> Path:
    """The root of *settings* (each public reader takes ``settings=``: a command reads the federation it was
    handed, never the process's)."""
    return settings.root


def window(since: datetime | None = None, until: datetime | None = None) -> tuple[datetime, datetime]:
    """The aware (since, until) of a window; the default is the last 24 hours."""
    until = _io.aware(until) or _io.utcnow()
    since = _io.aware(since) or until - DEFAULT_WINDOW
    if since > until:
        raise ValueError(f"the window starts ({_io.iso(since)}) after it ends ({_io.iso(until)})")
    return since, until


def timeout() -> float:
    try:
        return config.control_timings().fleet_timeout
    except ConfigError:
        return config.ControlTimings().fleet_timeout


def fleet(*, settings: config.Settings) -> list[dict]:
    """Every announced process: host, pid, agent, phase, source, version, started_at, last_seen, alive."""
    return _fleet.read_fleet(_root(settings), timeout())


def fleet_summary(processes: list[dict]) -> dict[str, Any]:
    """``{"live", "gone", "phases": {phase: live processes in it}, "all_in": the phase every live process
    is in, or None (mixed, or none live)}``: the answer to "is the whole fleet in phase N yet?"."""
    live = [p for p in processes if p.get("alive")]
    phases: dict[str, int] = {}
    for p in live:
        phases[str(p.get("phase"))] = phases.get(str(p.get("phase")), 0) + 1
    only = list(phases)
    return {"live": len(live), "gone": len(processes) - len(live), "phases": dict(sorted(phases.items())),
            "all_in": int(only[0]) if len(only) == 1 and only[0].isdigit() else None}


def counters(since: datetime | None = None, until: datetime | None = None, *,
             settings: config.Settings) -> list[dict]:
    """Per (entity, phase) over the window: comparisons, mismatches, errors and both sides' latency histograms.

    Each histogram is ``{"bounds_ms": [...], "counts": [...], "sum_ms": float}``:
    counts per bucket (not cumulative), one more count than bounds (the last
    bucket is +Inf).
    """
    since, until = window(since, until)
    return merge_counters(_counts.read_cells(_root(settings), since, until))


# The one place counts are added up: ``rollout status``, the guards, ``report --log``, the dashboard
# and ``/metrics`` all sum counted cells (or rows of ``counters()``) with these two.


def merge_counters(*parts: Iterable[dict]) -> list[dict]:
    """Count cells, or rows of ``counters()`` over adjacent windows, summed per (entity, phase), sorted."""
    merged: dict[tuple[str, int], dict[str, Any]] = {}
    for part in parts:
        for row in part:
            _add_row(merged, row)
    return [merged[k] for k in sorted(merged)]


def _add_row(merged: dict[tuple[str, int], dict[str, Any]], row: dict) -> None:
    key = (str(row.get("entity")), int(row.get("phase") or 0))
    slot = merged.get(key)
    if slot is None:
        slot = merged[key] = {"entity": key[0], "phase": key[1], "comparisons": 0, "mismatches": 0,
                              "errors": 0, "latency": {side: _counts.empty_latency() for side in _counts.SIDES}}
    for field in ("comparisons", "mismatches", "errors"):
        slot[field] += int(row.get(field) or 0)
    for side in _counts.SIDES:
        _counts.add_latency(slot["latency"][side], (row.get("latency") or {}).get(side) or {})


def counters_by_hour(since: datetime, until: datetime, *, settings: config.Settings) -> dict[int, list[dict]]:
    """``counters()`` of each clock hour of the window, in one read of its files: {hour's start (epoch
    seconds): rows}, hours without counts left out.

    Each hour's rows are what ``counters()`` of [hour, hour + 1 h) gives when the window holds that hour
    whole (a kept cell never spans two clock hours).  One pass reads each file of the window once (a day
    file of ``by-hour/`` once, not once per hour it holds): what the dashboard reads of the hours it
    keeps, 168 of them for its 7-day window.
    """
    since, until = window(since, until)
    hours: dict[int, dict[tuple[str, int], dict[str, Any]]] = {}
    for cell in _counts.read_cells(_root(settings), since, until):
        start = int(float(cell["start"]))
        _add_row(hours.setdefault(start - start % _counts.HOUR, {}), cell)
    return {hour: [merged[k] for k in sorted(merged)] for hour, merged in sorted(hours.items())}


def summarise(rows: Iterable[dict]) -> dict[str, dict]:
    """Per entity (all phases) of ``counters()`` rows: counts, rate and p50/p99 of each side in ms."""
    return {row["entity"]: {"comparisons": row["comparisons"], "mismatches": row["mismatches"],
                            "errors": row["errors"], "rate": rate(row["comparisons"], row["mismatches"]),
                            **{f"{side}_ms": {"p50": _counts.quantile(row["latency"][side], 0.5),
                                              "p99": _counts.quantile(row["latency"][side], 0.99)}
                               for side in _counts.SIDES}}
            for row in merge_counters([{**r, "phase": 0} for r in rows])}


def rate(comparisons: int, mismatches: int) -> float | None:
    return None if comparisons == 0 else 1.0 - mismatches / comparisons


def consistency(since: datetime | None = None, until: datetime | None = None, *,
                settings: config.Settings) -> dict[str, dict]:
    """Per entity over the window (all phases): counts, rate and p50/p99 of each side in ms."""
    return summarise(counters(since, until, settings=settings))


def totals(since: datetime | None = None, until: datetime | None = None,
           phases: tuple[int, ...] | None = None, *, settings: config.Settings) -> dict[str, Any]:
    """Comparisons, mismatches, errors and rate summed over every entity (of *phases*, default all)."""
    comparisons = mismatches = errors = 0
    for c in counters(since, until, settings=settings):
        if phases is None or c["phase"] in phases:
            comparisons += c["comparisons"]
            mismatches += c["mismatches"]
            errors += c["errors"]
    return {"comparisons": comparisons, "mismatches": mismatches, "errors": errors,
            "rate": rate(comparisons, mismatches)}


def series(since: datetime | None = None, until: datetime | None = None,
           bucket_seconds: int = 3600, *, settings: config.Settings) -> dict[str, list[dict]]:
    """Per entity, one point per bucket over the window (zero-filled), oldest first.

    A point is ``{"start": ISO 8601, "comparisons", "mismatches", "errors"}``.
    Counts are kept per minute, so *bucket_seconds* is a multiple of 60.
    """
    if bucket_seconds <= 0 or bucket_seconds % _counts.BUCKET_SECONDS:
        raise ValueError(f"bucket_seconds must be a positive multiple of {_counts.BUCKET_SECONDS} "
                         f"(counts are kept per minute), not {bucket_seconds}")
    since, until = window(since, until)
    first = int(since.timestamp()) // bucket_seconds * bucket_seconds
    last = int(until.timestamp())
    starts = list(range(first, last + 1, bucket_seconds)) or [first]
    per: dict[str, dict[int, list[int]]] = {}
    # a roll-up's closed minutes come as one cell at the first one's start: right for hourly points only
    for cell in _counts.read_cells(_root(settings), since, until, rollups=bucket_seconds % _counts.HOUR == 0):
        tally(per, str(cell.get("entity")), int(float(cell["start"])) // bucket_seconds * bucket_seconds, cell)
    return points(per, starts, since.tzinfo)


def tally(per: dict[str, dict[int, list[int]]], entity: str, start: int, row: dict) -> None:
    """Add the counts of a cell (or a ``counters()`` row) to *per*[entity][start]:
    [comparisons, mismatches, errors].  With :func:`points`, the one way counts become a series."""
    slot = per.setdefault(entity, {}).setdefault(start, [0, 0, 0])
    slot[0] += int(row.get("comparisons") or 0)
    slot[1] += int(row.get("mismatches") or 0)
    slot[2] += int(row.get("errors") or 0)


def points(per: dict[str, dict[int, list[int]]], starts: list[int], tz: Any) -> dict[str, list[dict]]:
    """:func:`series`' shape from what :func:`tally` added up: per entity, a point per start (zero-filled)."""
    zero = (0, 0, 0)
    return {entity: [{"start": _io.iso(datetime.fromtimestamp(t, tz=tz)),
                      "comparisons": per[entity].get(t, zero)[0], "mismatches": per[entity].get(t, zero)[1],
                      "errors": per[entity].get(t, zero)[2]}
                     for t in starts]
            for entity in sorted(per)}


def recent_mismatches(limit: int = 100, *, settings: config.Settings) -> list[dict]:
    """The fleet's most recent mismatches, newest first (at most 1,000 are kept):
    ``{"at", "host", "pid", "entity", "key", "phase", "op", "authority", "diff"}``."""
    records = _counts.read_mismatches(_root(settings))
    records.sort(key=lambda r: str(r.get("at")), reverse=True)
    keys = ("at", "host", "pid", "entity", "key", "phase", "op", "authority", "diff")
    return [{k: r.get(k) for k in keys} for r in records[: max(0, min(limit, _counts.MISMATCH_CAP))]]


def flag_record(*, settings: config.Settings) -> tuple[dict | None, str | None]:
    """(the flag as CONTRACT shows it or None, the reason it cannot be read or None)."""
    try:
        flag = _flag.read_flag(_root(settings))
    except _flag.FlagError as exc:
        return None, str(exc)
    if flag is None:
        return None, None
    return {"phase": flag.phase, "sample": flag.sample, "set_at": flag.set_at, "set_by": flag.set_by,
            "reason": flag.reason}, None


def history(limit: int = HISTORY_LIMIT, *, settings: config.Settings) -> list[dict]:
    """The latest changes of the flag, oldest first: ``{"at", "from", "to", "by", "reason", "forced"}``."""
    keys = ("at", "from", "to", "by", "reason", "forced")
    return [{k: e.get(k) for k in keys} for e in _flag.history(_root(settings))[-limit:]]


def status(since: datetime | None = None, until: datetime | None = None, *,
           settings: config.Settings) -> dict[str, Any]:
    """The ``federation rollout status --json`` object (CONTRACT) of *settings*' federation."""
    s = settings
    since, until = window(since, until)
    return status_document(fleet(settings=s), consistency(since, until, settings=s), since, until,
                           history(settings=s), settings=s)


def status_document(processes: list[dict], summed: Any, since: datetime, until: datetime,
                    past: list[dict], *, settings: config.Settings) -> dict[str, Any]:
    """The status object of a window from its parts (the fleet, its counts summed, the history), with
    the flag and what the readers skipped: one shape for ``rollout status`` and the dashboard."""
    flag, problem = flag_record(settings=settings)
    data: dict[str, Any] = {"flag": flag, "fleet": processes, "fleet_summary": fleet_summary(processes),
                            "consistency": summed,
                            "window": {"since": _io.iso(since), "until": _io.iso(until)}, "history": past}
    if problem is not None:
        data["flag_error"] = problem
    skipped = control_errors()
    if skipped:
        data["control_errors"] = skipped
    return data


def control_errors() -> list[dict[str, str]]:
    """``[{"path", "reason"}]``: the control files (or parts) the readers skipped lately, and why."""
    return _io.problems()
