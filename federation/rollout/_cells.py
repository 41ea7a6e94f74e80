"""Counted consistency, the counts' files: those a process writes (one per process and hour under
``control/counts/``, with its roll-up) and the merged ones retention leaves, read back and validated as a
window's cells; latency histograms.  A process's counts in memory are :mod:`federation.rollout._tally`'s;
the face, with retention, is :mod:`federation.rollout._counts`."""

from __future__ import annotations

import json
import math
import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from .._logging import library_logger
from . import _io


log = library_logger("federation.rollout")


def _stem(name: str) -> str:
    """A control/ count file's name without its extension (``2026120713.json`` -> ``2026120713``)."""
    return os.path.splitext(name)[0]

#: counts are kept per bucket of this many seconds (a minute; FEDERATION_COUNTS_BUCKET, a divisor of 3600)
BUCKET_SECONDS = 60
HOUR = 3600
#: upper bounds of the latency histogram buckets, in milliseconds; a last bucket holds the rest (+Inf)
LATENCY_BOUNDS_MS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0,
                     2500.0, 10000.0)
_BOUNDS_S = tuple(b / 1000.0 for b in LATENCY_BOUNDS_MS)
SIDES = ("files", "db")
#: the fleet keeps this many recent mismatches (each process at most this many)
MISMATCH_CAP = 1000
#: counts of hours that ended this long ago are removed (by every running process's maintenance pass and by
#: ``federation prune``), and so are the mismatch files of processes not heard of for as long
KEEP_SECONDS = 35 * 86400
#: the processes' files of an hour are merged into its by-minute file once the hour ended this long ago
#: (a process writes an hour for the last time within a flush, 10 s, of its end; the dashboard takes an
#: hour as final 2 minutes after it)
MINUTES_AFTER = 600
#: an hour's by-minute file is merged into its day's by-hour file once the hour ended this long ago
HOURS_AFTER = 48 * 3600
#: a merged file is removed this long after the file it went into was written (a reader in between
#: reads one of the two, never both)
GRACE_SECONDS = 120.0
#: a running process's maintenance pass: at most this many files read, written or removed
PASS_BUDGET = 200
#: a running process runs a maintenance pass every this many counts flushes (60 s by default)
PASS_EVERY_FLUSHES = 6
BY_MINUTE = "by-minute"
BY_HOUR = "by-hour"
#: the kind, and the file name's ending, of a process's roll-up of an hour (beside its counts file)
ROLLUP = "rollup"
ROLLUP_SUFFIX = ".rollup"
DAY = 86400
MAINTAIN_LOCK = ".maintain.lock"


def _cell_bytes(key: tuple[int, str, int], data: dict[str, Any]) -> bytes:
    """One cell as the counts file holds it (``start``, ``entity``, ``phase``, then its counts)."""
    bucket, entity, phase = key
    return _io.dumps({"start": bucket, "entity": entity, "phase": phase, **data})


# ---------------------------------------------------------------------------
# the files


def hour_name(hour: int) -> str:
    return datetime.fromtimestamp(hour, tz=timezone.utc).strftime("%Y%m%dT%H")


def hour_of(name: str) -> int | None:
    # the names hour_name writes, parsed without strptime (a reader of control/counts/ parses every hour
    # folder's name: 840 of them at 35 days, ~12 us each through strptime); anything else as before
    if len(name) == 11 and name[8] == "T" and name[:8].isdigit() and name[9:].isdigit():
        try:
            return int(datetime(int(name[:4]), int(name[4:6]), int(name[6:8]), int(name[9:]),
                                tzinfo=timezone.utc).timestamp())
        except ValueError:
            return None
    try:
        return int(datetime.strptime(name, "%Y%m%dT%H").replace(tzinfo=timezone.utc).timestamp())
    except ValueError:
        return None


def counts_file(root: Path, hour: int, pid: int, started: float) -> Path:
    return _io.control_dir(root) / _io.COUNTS_DIR / hour_name(hour) / f"{_io.HOST}-{pid}-{int(started * 1000)}.json"


def mismatch_file(root: Path, pid: int) -> Path:
    return _io.control_dir(root) / _io.MISMATCH_DIR / f"{_io.HOST}-{pid}.jsonl"


def rollup_name(name: str) -> str:
    """The roll-up beside a process's counts file (``<host>-<pid>-<t>.json`` -> ``<host>-<pid>-<t>.rollup``)."""
    return _stem(name) + ROLLUP_SUFFIX


def write_counts(path: Path, pid: int, started_at: str, width: int,
                 cells: list[tuple[tuple[int, str, int], dict[str, Any] | bytes]], *,
                 at: float | None = None) -> None:
    """Write a process's counts of one hour (*cells* as ``(key, data)``, data a cell's counts, seconds
    included, or the bytes a :class:`Tally` sealed them as), then its roll-up beside it (:func:`rollup`,
    its minutes closed at *at*, default now)."""
    head = _io.dumps({"host": _io.HOST, "pid": pid, "started_at": started_at, "bucket_seconds": width,
                      "bounds_ms": list(LATENCY_BOUNDS_MS)})
    ordered = sorted(cells, key=lambda item: item[0])
    parts = [data if isinstance(data, bytes) else _cell_bytes(key, data) for key, data in ordered]
    _io.write_atomic(path, head[:-1] + b',"cells":[' + b",".join(parts) + b"]}")
    if parts:  # second: a roll-up is never newer than the file it sums (a reader may take either)
        doc = json.loads(head)
        doc["cells"] = [json.loads(part) if isinstance(data, bytes) else {"start": key[0], "entity": key[1],
                                                                           "phase": key[2], **data}
                        for (key, data), part in zip(ordered, parts)]
        _io.write_atomic(path.with_name(rollup_name(path.name)),
                         _io.dumps(rollup(doc, path.name, time.time() if at is None else at)))



def rollup(doc: dict, name: str, at: float) -> dict:
    """The roll-up of a process's counts document *doc* (file *name*) written at *at*.

    Its cells whose bucket ended by *at* (closed) are summed per entity and phase into ``closed``
    (counts and latency histograms, no seconds; ``from`` the first closed bucket's start, ``until`` the
    end of the last, so every closed cell lies in [from, until)); the others (the bucket in progress)
    are kept whole, seconds included, in ``cells``.  A window that holds [from, until) counts the closed
    cells whole, so their sums are what it would add up from *doc*: a reader takes the roll-up (about
    a cell per entity) instead of the seconds of every minute of the hour.
    """
    width = int(doc["bucket_seconds"])
    first_start = min(int(c["start"]) for c in doc["cells"])
    hour = first_start - first_start % HOUR
    until = min(int(at) // width * width, hour + HOUR)
    sums: dict[tuple[str, int], dict] = {}
    opened, first = [], None
    for cell in doc["cells"]:
        start = int(cell["start"])
        if start + width > until:
            opened.append(cell)
            continue
        first = start if first is None else min(first, start)
        key = (cell["entity"], cell["phase"])
        slot = sums.get(key)
        if slot is None:
            slot = sums[key] = {"entity": key[0], "phase": key[1], "comparisons": 0, "mismatches": 0, "errors": 0,
                                "latency": {side: {"counts": [0] * (len(LATENCY_BOUNDS_MS) + 1), "sum_ms": 0.0}
                                            for side in SIDES}}
        for field in ("comparisons", "mismatches", "errors"):
            slot[field] += cell[field]
        for side in SIDES:
            hist = cell["latency"].get(side)
            if hist:
                into = slot["latency"][side]
                into["counts"] = [a + b for a, b in zip(into["counts"], hist["counts"])]
                into["sum_ms"] += hist["sum_ms"]
    closed = [{"start": first, **slot} for _, slot in sorted(sums.items())]
    for cell in closed:
        for side in SIDES:
            cell["latency"][side]["sum_ms"] = round(cell["latency"][side]["sum_ms"], 6)
    return {"kind": ROLLUP, "of": name, "host": doc["host"], "pid": doc["pid"], "started_at": doc["started_at"],
            "bucket_seconds": width, "bounds_ms": list(LATENCY_BOUNDS_MS),
            "closed": {"from": first if first is not None else until, "until": until, "cells": closed},
            "cells": opened}


def append_mismatches(path: Path, records: list[dict], lines_before: int) -> int:
    """Append *records*; past twice the cap, rewrite the file with its last MISMATCH_CAP lines.

    Returns the number of lines the file now has.
    """
    if not records:
        return lines_before
    _io.append_bytes(path, b"".join(_io.dumps(r) + b"\n" for r in records))
    lines = lines_before + len(records)
    if lines > 2 * MISMATCH_CAP:
        kept = _io.read_lines(path)[-MISMATCH_CAP:]
        _io.write_atomic(path, b"".join(_io.dumps(r) + b"\n" for r in kept))
        lines = len(kept)
    return lines


def _epoch(moment: datetime) -> float:
    return moment.astimezone(timezone.utc).timestamp()


def _listing(path: Path, root: Path) -> list[str]:
    """The names in *path* (reached from the root without following a link); [] when missing or unreadable
    (noted)."""
    try:
        return _io.list_folder(path, Path(root))
    except OSError as exc:
        _io.note_problem(path, str(exc))
        return []


def read_cells(root: Path, since: datetime, until: datetime, *, rollups: bool = True) -> Iterator[dict]:
    """Every counted cell of the fleet inside [since, until): whole, or the part of its counts inside.

    *rollups* (the sums of a window: ``counters()``, a series per hour): a process's file that has a
    roll-up is read as its roll-up's cells when the window holds the roll-up's closed minutes whole (or
    none of them): one cell per entity and phase (its bucket's start is the first closed one's) for the
    closed minutes, plus the minute in progress with its seconds; otherwise (the window cuts those
    minutes, or a series finer than an hour) the file itself, seconds included.  Either gives the same
    sums.

    Reads, for the hours the window covers, the day files (``by-hour/``), the hour files not yet in a
    day file (``by-minute/``) and the processes' files not yet merged into either (see
    :func:`maintain`).  The processes' folders are listed first and a merged file is removed only
    :data:`GRACE_SECONDS` after what replaced it was written, so a read racing a merge counts every
    file once.  A cell written without seconds (an older process) counts when its bucket starts in the
    window.
    """
    lo, hi = _epoch(since), _epoch(until)
    top = _io.control_dir(root) / _io.COUNTS_DIR
    names = _listing(top, root)
    if not names:
        return
    raw: dict[int, list[str]] = {}
    for hour_dir in sorted(names):  # 1. the processes' files of each hour, listed before the merged files are read
        hour = hour_of(hour_dir)
        if hour is None or hour + HOUR <= lo or hour >= hi:
            continue
        raw[hour] = sorted(_listing(top / hour_dir, root))
    covered: dict[int, Any] = {}
    if BY_HOUR in names:  # 2. the day files
        for name in sorted(_listing(top / BY_HOUR, root)):
            day = day_of(name)
            if day is None or day + DAY <= lo or day >= hi:
                continue
            doc = _compacted(top / BY_HOUR / name, BY_HOUR)
            if doc is None:
                continue
            for merged_hour, info in doc["hours"].items():
                hour = hour_of(merged_hour)
                if hour is not None:
                    covered[hour] = info["sources"]
            yield from _cells_in(doc, top / BY_HOUR / name, lo, hi)
    if BY_MINUTE in names:  # 3. the hour files not in a day file
        for name in sorted(_listing(top / BY_MINUTE, root)):
            hour = hour_of(_stem(name)) if name.endswith(".json") else None
            if hour is None or hour + HOUR <= lo or hour >= hi or hour in covered:
                continue
            doc = _compacted(top / BY_MINUTE / name, BY_MINUTE)
            if doc is None:
                continue
            covered[hour] = doc["sources"]
            yield from _cells_in(doc, top / BY_MINUTE / name, lo, hi)
    for hour, files in raw.items():  # 4. the processes' files not merged yet
        merged = covered.get(hour) or {}
        listed = set(files)
        for name in files:
            if not name.endswith(".json") or name.startswith(".") or name in merged:
                continue
            path = top / hour_name(hour) / name
            if rollups and rollup_name(name) in listed:
                summed = _rollup_cells(path.with_name(rollup_name(name)), name, lo, hi)
                if summed is not None:
                    yield from summed
                    continue
            try:
                doc = _io.read_document(path)
            except ValueError as exc:  # a link, FIFO, torn or hostile file: never fail a reader; say it
                _io.note_problem(path, str(exc))
                continue
            if doc is None:
                continue  # removed meanwhile
            if not _counts_doc(doc):
                _io.note_problem(path, "not a counts file of this version (bounds_ms or cells)")
                continue
            yield from _cells_in(doc, path, lo, hi)


def _rollup_cells(path: Path, of: str, lo: float, hi: float) -> list[dict] | None:
    """The cells of roll-up *path* (of the counts file *of*) inside [lo, hi); None when the window cuts its
    closed minutes (their seconds are in the file itself) or the roll-up cannot be used (missing, or
    not one of this version: noted): the caller reads the file instead."""
    try:
        doc = _io.read_document(path)
    except ValueError as exc:
        _io.note_problem(path, f"{exc}: its counts file read instead")
        return None
    if doc is None:
        return None
    closed = doc.get("closed") if isinstance(doc, dict) else None
    if not (_counts_doc(doc) and doc.get("kind") == ROLLUP and doc.get("of") == of and isinstance(closed, dict)
            and isinstance(closed.get("cells"), list)):
        _io.note_problem(path, "not a roll-up of this version (kind, of, bounds_ms, closed or cells): "
                               "its counts file read instead")
        return None
    first, until = _io.finite(closed.get("from")), _io.finite(closed.get("until"))
    if first is None or until is None:
        _io.note_problem(path, "a roll-up without its closed minutes' bounds: its counts file read instead")
        return None
    out: list[dict] = []
    if closed["cells"] and until > lo and first < hi:  # the window holds closed minutes
        if not (lo <= first and until <= hi):
            return None  # it cuts them: the seconds are needed
        for raw in closed["cells"]:
            cell = valid_cell(raw)
            if cell is None:
                _io.note_problem(path, "a roll-up with a cell that is not valid: its counts file read instead")
                return None
            out.append(cell)
    out.extend(_cells_in(doc, path, lo, hi))  # the minute in progress, with its seconds
    return out


def _counts_doc(doc: Any) -> bool:
    return isinstance(doc, dict) and isinstance(doc.get("bounds_ms"), list) \
        and tuple(doc["bounds_ms"]) == LATENCY_BOUNDS_MS and isinstance(doc.get("cells"), list)


def _cells_in(doc: dict, path: Path, lo: float, hi: float) -> Iterator[dict]:
    """The valid cells of a counts document inside [lo, hi) (a bad cell is skipped and noted)."""
    width = _io.finite(doc.get("bucket_seconds")) or float(BUCKET_SECONDS)
    bad = 0
    for raw in doc["cells"]:
        if not isinstance(raw, dict):
            bad += 1
            continue
        start = _io.finite(raw.get("start"))
        if start is not None and (start >= hi or start + width <= lo):
            continue  # outside the window: not even checked
        cell = valid_cell(raw)
        if cell is None:
            bad += 1
            continue
        start = cell["start"]
        if lo <= start and start + width <= hi:
            yield cell
        elif start < hi and start + width > lo:
            part = _inside(cell, start, lo, hi)
            if part is not None:
                yield part
    if bad:
        _io.note_problem(path, f"{bad} cell(s) with counts that are not finite whole numbers >= 0, "
                               "or a bad start, entity or phase: not counted")


def _inside(cell: dict, start: float, lo: float, hi: float) -> dict | None:
    """The part of a cell the window [lo, hi) cuts: the counts of its whole seconds inside (a second *lo*
    falls in the middle of is left out: what came before the window never counts), the whole cell when
    they are all of it; None when nothing is inside."""
    seconds, step = cell.get("seconds"), 1
    if not isinstance(seconds, dict):
        seconds, step = cell.get("minutes"), 60  # a merged hour: its minutes, each counted when it starts inside
    if not isinstance(seconds, dict):
        return cell if lo <= start < hi else None
    first = math.ceil(lo) if step == 1 else lo
    totals = [0, 0, 0]
    for off, counts in seconds.items():
        try:
            at = start + int(off) * step
            if first <= at < hi:
                for i in range(3):
                    totals[i] += int(counts[i])
        except (TypeError, ValueError, IndexError):
            continue
    if totals == [0, 0, 0]:
        return None
    whole = [int(cell.get(k) or 0) for k in ("comparisons", "mismatches", "errors")]
    if totals == whole:
        return cell  # every counted second is inside: the latencies too
    return {"start": cell.get("start"), "entity": cell.get("entity"), "phase": cell.get("phase"),
            "comparisons": totals[0], "mismatches": totals[1], "errors": totals[2], "latency": {}}


def valid_cell(cell: Any) -> dict | None:
    """A counted cell with every number checked (counts finite whole numbers >= 0), or None."""
    if not isinstance(cell, dict):
        return None
    start, entity, phase = _io.finite(cell.get("start")), cell.get("entity"), cell.get("phase")
    if start is None or not isinstance(entity, str) or isinstance(phase, bool) or phase not in (1, 2, 3, 4):
        return None
    out: dict[str, Any] = {"start": start, "entity": entity, "phase": phase}
    for field in ("comparisons", "mismatches", "errors"):
        value = _io.count(cell.get(field, 0))
        if value is None:
            return None
        out[field] = value
    seconds = _valid_seconds(cell.get("seconds"))
    if seconds is not None:
        out["seconds"] = seconds
    elif "minutes" in cell:  # a merged hour (by-minute/): its counts per minute
        minutes = _valid_seconds(cell.get("minutes"), 60)
        if minutes is None:
            return None
        out["minutes"] = minutes
    if out["mismatches"] > out["comparisons"]:  # a mismatch is a comparison: such a cell was not counted here
        return None
    latency = cell.get("latency") or {}
    if not isinstance(latency, dict):
        return None
    out["latency"] = {}
    for side in SIDES:
        hist = latency.get(side) or {"counts": [0] * (len(LATENCY_BOUNDS_MS) + 1), "sum_ms": 0.0}
        if not isinstance(hist, dict) or not isinstance(hist.get("counts"), list):
            return None
        counts = hist["counts"]
        if not (len(counts) == len(LATENCY_BOUNDS_MS) + 1 and all(type(c) is int for c in counts)
                and min(counts) >= 0):  # the usual case (whole numbers >= 0) checked fast, else one by one
            counts = [_io.count(c) for c in counts]
        total = _io.finite(hist.get("sum_ms") or 0.0)
        if len(counts) != len(LATENCY_BOUNDS_MS) + 1 or None in counts or total is None:
            return None
        out["latency"][side] = {"counts": counts, "sum_ms": total}
    return out


def _valid_seconds(seconds: Any, span: int = 3600) -> dict[str, list[int]] | None:
    """A cell's per-second (per-minute: *span* 60) counts with every entry checked (an offset 0 to
    *span* - 1, three counts), or None."""
    if not isinstance(seconds, dict):
        return None
    out: dict[str, list[int]] = {}
    for off, counts in seconds.items():
        try:
            second = int(off)
        except (TypeError, ValueError):
            return None
        if not 0 <= second < span or not isinstance(counts, list) or len(counts) != 3:
            return None
        if type(counts[0]) is int and type(counts[1]) is int and type(counts[2]) is int \
                and counts[0] >= 0 and counts[1] >= 0 and counts[2] >= 0:  # the usual case, checked fast
            out[str(second)] = counts
            continue
        checked = [_io.count(c) for c in counts]
        if None in checked:
            return None
        out[str(second)] = checked
    return out


def empty_latency() -> dict[str, Any]:
    return {"bounds_ms": list(LATENCY_BOUNDS_MS), "counts": [0] * (len(LATENCY_BOUNDS_MS) + 1), "sum_ms": 0.0}


def add_latency(into: dict[str, Any], cell_side: dict[str, Any]) -> None:
    counts = cell_side.get("counts") or ()
    if len(counts) != len(into["counts"]):
        return
    into["counts"] = [a + int(b) for a, b in zip(into["counts"], counts)]
    into["sum_ms"] += float(cell_side.get("sum_ms") or 0.0)


def quantile(hist: dict[str, Any], q: float) -> float | None:
    """The *q* quantile (0-1) of a histogram in ms, interpolated inside its bucket; None when empty."""
    counts = hist["counts"]
    total = sum(counts)
    if total == 0:
        return None
    rank = q * total
    seen = 0
    bounds = hist["bounds_ms"]
    for i, n in enumerate(counts):
        if n and seen + n >= rank:
            if i >= len(bounds):  # the +Inf bucket: its lower bound is all we know
                return float(bounds[-1])
            lower = 0.0 if i == 0 else float(bounds[i - 1])
            return round(lower + (float(bounds[i]) - lower) * max(rank - seen, 0.0) / n, 4)
        seen += n
    return float(bounds[-1])


def read_mismatches(root: Path) -> list[dict]:
    directory = _io.control_dir(root) / _io.MISMATCH_DIR
    names = sorted(_io.list_folder(directory, root))
    out: list[dict] = []
    for name in names:
        if name.endswith(".jsonl") and not name.startswith("."):
            out += [r for r in _io.read_lines(directory / name) if isinstance(r.get("at"), str)]
    return out




def day_name(day: int) -> str:
    return datetime.fromtimestamp(day, tz=timezone.utc).strftime("%Y%m%d") + ".json"


def day_of(name: str) -> int | None:
    if not name.endswith(".json"):
        return None
    try:
        return int(datetime.strptime(_stem(name), "%Y%m%d").replace(tzinfo=timezone.utc).timestamp())
    except ValueError:
        return None


def _compacted(path: Path, kind: str) -> dict | None:
    """A merged counts file (by-minute or by-hour) with its bookkeeping checked; None when missing or
    unusable (noted)."""
    try:
        doc = _io.read_document(path)
    except ValueError as exc:
        _io.note_problem(path, str(exc))
        return None
    if doc is None:
        return None
    if not _counts_doc(doc) or doc.get("kind") != kind:
        _io.note_problem(path, f"not a {kind} counts file of this version (kind, bounds_ms or cells)")
        return None
    if kind == BY_MINUTE:
        ok = isinstance(doc.get("sources"), dict)
    else:
        hours = doc.get("hours")
        ok = isinstance(hours, dict) and all(
            isinstance(info, dict) and isinstance(info.get("sources"), dict)
            and _io.finite(info.get("merged_at")) is not None for info in hours.values())
    if not ok:
        _io.note_problem(path, f"a {kind} counts file with bad bookkeeping (sources or hours): not read")
        return None
    return doc
