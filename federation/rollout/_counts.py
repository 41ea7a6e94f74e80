"""Counted consistency: every shadow comparison, per minute, entity and phase.

A process accumulates its counts in memory (:class:`Tally`, a few
microseconds per call) and its background thread writes them at most every
few seconds and at exit, one file per process and hour:
``control/counts/<YYYYMMDDTHH>/<host>-<pid>-<start>.json`` (so a flush
rewrites only the current hour's cells, and a reader of a window opens only
the hours it covers).  Readers merge the files of the whole fleet.  Latencies
are fixed-bound histograms, so processes merge by adding counts and p50/p99
come from the merged histogram.  A window counts the buckets that start
inside it whole; a bucket the window cuts counts the seconds inside it (each
cell also keeps its comparisons, mismatches and errors per second), so a
window is exact to the second.  Latencies of a cut bucket are left out.
"""

from __future__ import annotations

import bisect
import math
import os
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator

from .._logging import library_logger
from ..errors import CorruptFileError
from ..stores import files as _files
from . import _io

log = library_logger("federation.rollout")

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
#: counts (hour folders) older than this are removed by the next process that starts
KEEP_SECONDS = 35 * 86400
#: the longest text kept of one value in a sampled mismatch's diff
_DIFF_TEXT = 500


class Cell:
    """The counts of one (bucket, entity, phase)."""

    __slots__ = ("comparisons", "mismatches", "errors", "hist", "sums", "seconds")

    def __init__(self) -> None:
        self.comparisons = self.mismatches = self.errors = 0
        #: second within the bucket -> [comparisons, mismatches, errors]: what makes a window exact
        self.seconds: dict[int, list[int]] = {}
        n = len(LATENCY_BOUNDS_MS) + 1
        self.hist = {"files": [0] * n, "db": [0] * n}
        self.sums = {"files": 0.0, "db": 0.0}

    def to_json(self) -> dict[str, Any]:
        return {"comparisons": self.comparisons, "mismatches": self.mismatches, "errors": self.errors,
                "latency": {side: {"counts": list(self.hist[side]), "sum_ms": round(self.sums[side] * 1000, 6)}
                            for side in SIDES},
                "seconds": {str(off): list(c) for off, c in sorted(self.seconds.items())}}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Cell":
        cell = cls()
        cell.comparisons, cell.mismatches, cell.errors = data["comparisons"], data["mismatches"], data["errors"]
        for side in SIDES:
            cell.hist[side] = list(data["latency"][side]["counts"])
            cell.sums[side] = data["latency"][side]["sum_ms"] / 1000.0
        cell.seconds = {int(off): list(c) for off, c in (data.get("seconds") or {}).items()}
        return cell


class Tally:
    """One process's counts not yet written for good, and its mismatches not yet written."""

    def __init__(self, width: int = BUCKET_SECONDS) -> None:
        self._lock = threading.Lock()
        self.width = width
        self.cells: dict[tuple[int, str, int], Cell] = {}
        self.pending: list[dict] = []
        self.dirty = False

    def observe(self, entity: str, phase: int, *, compared: bool, mismatched: bool = False, error: bool = False,
                files_s: float | None = None, db_s: float | None = None) -> None:
        """Count one call of the shim: a comparison (mismatched or not), a shadow error, each side's time."""
        width = self.width
        second = int(time.time())
        bucket = second // width * width
        key = (bucket, entity, phase)
        with self._lock:
            cell = self.cells.get(key)
            if cell is None:
                cell = self.cells[key] = Cell()
            per = cell.seconds.get(second - bucket)
            if per is None and (compared or error):
                per = cell.seconds[second - bucket] = [0, 0, 0]
            if compared:
                cell.comparisons += 1
                per[0] += 1
                if mismatched:
                    cell.mismatches += 1
                    per[1] += 1
            if error:
                cell.errors += 1
                per[2] += 1
            if files_s is not None:
                cell.hist["files"][bisect.bisect_left(_BOUNDS_S, files_s)] += 1
                cell.sums["files"] += files_s
            if db_s is not None:
                cell.hist["db"][bisect.bisect_left(_BOUNDS_S, db_s)] += 1
                cell.sums["db"] += db_s
            self.dirty = True

    def mismatch(self, *, entity: str, key: Any, phase: int, op: str, authority: str, diff: list) -> None:
        """Keep one differing record for the sample of recent mismatches."""
        record = {"at": _io.iso(_io.utcnow()), "host": _io.HOST, "pid": os.getpid(), "entity": entity,
                  "key": None if key is None else str(key), "phase": phase, "op": op, "authority": authority,
                  "diff": _trim(diff)}
        with self._lock:
            self.pending.append(record)
            if len(self.pending) > MISMATCH_CAP:
                del self.pending[: len(self.pending) - MISMATCH_CAP]
            self.dirty = True

    def take(self) -> tuple[dict[int, list[tuple[tuple[int, str, int], dict]]], list[dict]]:
        """({hour: every cell of that hour as JSON} for the hours in memory, the pending mismatches).

        Memory holds the current hour and past hours not yet written: cells of
        past hours leave it here, as once written they do not change.
        """
        current = int(time.time()) // HOUR * HOUR
        with self._lock:
            hours: dict[int, list[tuple[tuple[int, str, int], dict]]] = {}
            for key, cell in list(self.cells.items()):
                hour = key[0] - key[0] % HOUR
                hours.setdefault(hour, []).append((key, cell.to_json()))
                if hour < current:
                    del self.cells[key]
            pending, self.pending = self.pending, []
            self.dirty = False
        return hours, pending

    def give_back(self, hours: dict[int, list[tuple[tuple[int, str, int], dict]]], pending: list[dict]) -> None:
        """A flush failed: past hours' cells come back, to be written by the next one."""
        with self._lock:
            for items in hours.values():
                for key, data in items:
                    if key not in self.cells:
                        self.cells[key] = Cell.from_json(data)
            self.pending[:0] = pending[-MISMATCH_CAP:]
            self.dirty = True

    def reset(self) -> None:
        with self._lock:
            self.cells.clear()
            self.pending.clear()
            self.dirty = False


def _trim(value: Any) -> Any:
    """A diff small enough to keep a thousand of (long texts are cut)."""
    if isinstance(value, str):
        return value if len(value) <= _DIFF_TEXT else value[:_DIFF_TEXT] + f"... ({len(value)} chars)"
    if isinstance(value, dict):
        return {str(k): _trim(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_trim(v) for v in value]
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return _trim(str(value))


# ---------------------------------------------------------------------------
# the files


def hour_name(hour: int) -> str:
    return datetime.fromtimestamp(hour, tz=timezone.utc).strftime("%Y%m%dT%H")


def hour_of(name: str) -> int | None:
    try:
        return int(datetime.strptime(name, "%Y%m%dT%H").replace(tzinfo=timezone.utc).timestamp())
    except ValueError:
        return None


def counts_file(root: Path, hour: int, pid: int, started: float) -> Path:
    return _io.control_dir(root) / _io.COUNTS_DIR / hour_name(hour) / f"{_io.HOST}-{pid}-{int(started * 1000)}.json"


def mismatch_file(root: Path, pid: int) -> Path:
    return _io.control_dir(root) / _io.MISMATCH_DIR / f"{_io.HOST}-{pid}.jsonl"


def write_counts(path: Path, pid: int, started_at: str, width: int,
                 cells: list[tuple[tuple[int, str, int], dict]]) -> None:
    doc = {"host": _io.HOST, "pid": pid, "started_at": started_at, "bucket_seconds": width,
           "bounds_ms": list(LATENCY_BOUNDS_MS),
           "cells": [{"start": bucket, "entity": entity, "phase": phase, **data}
                     for (bucket, entity, phase), data in sorted(cells)]}
    _io.write_atomic(path, _io.dumps(doc))


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


def read_cells(root: Path, since: datetime, until: datetime) -> Iterator[dict]:
    """Every counted cell of the fleet inside [since, until): whole, or the part of its seconds inside.

    A cell written without seconds (an older process) counts when its bucket starts in the window.
    """
    lo, hi = _epoch(since), _epoch(until)
    top = _io.control_dir(root) / _io.COUNTS_DIR
    hours = sorted(_io.list_folder(top, root))
    for hour_dir in hours:
        hour = hour_of(hour_dir)
        if hour is None or hour + HOUR <= lo or hour >= hi:
            continue
        names = sorted(_io.list_folder(top / hour_dir, root))
        for name in names:
            if not name.endswith(".json") or name.startswith("."):
                continue
            path = top / hour_dir / name
            try:
                doc = _io.read_document(path)
            except ValueError as exc:  # a link, FIFO, torn or hostile file: never fail a reader; say it
                _io.note_problem(path, str(exc))
                continue
            if doc is None:
                continue  # removed meanwhile
            if not isinstance(doc, dict) or not isinstance(doc.get("bounds_ms"), list) \
                    or tuple(doc["bounds_ms"]) != LATENCY_BOUNDS_MS or not isinstance(doc.get("cells"), list):
                _io.note_problem(path, "not a counts file of this version (bounds_ms or cells)")
                continue
            width = _io.finite(doc.get("bucket_seconds")) or float(BUCKET_SECONDS)
            bad = 0
            for raw in doc["cells"]:
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
    seconds = cell.get("seconds")
    if not isinstance(seconds, dict):
        return cell if lo <= start < hi else None
    first = math.ceil(lo)
    totals = [0, 0, 0]
    for off, counts in seconds.items():
        try:
            at = start + int(off)
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
        counts = [_io.count(c) for c in hist["counts"]]
        total = _io.finite(hist.get("sum_ms") or 0.0)
        if len(counts) != len(LATENCY_BOUNDS_MS) + 1 or None in counts or total is None:
            return None
        out["latency"][side] = {"counts": counts, "sum_ms": total}
    return out


def _valid_seconds(seconds: Any) -> dict[str, list[int]] | None:
    """A cell's per-second counts with every entry checked (an offset 0-3599, three counts), or None."""
    if not isinstance(seconds, dict):
        return None
    out: dict[str, list[int]] = {}
    for off, counts in seconds.items():
        try:
            second = int(off)
        except (TypeError, ValueError):
            return None
        if not 0 <= second < 3600 or not isinstance(counts, list) or len(counts) != 3:
            return None
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


def prune_hours(root: Path, older_than: float) -> None:
    """Remove the count folders of hours that ended more than *older_than* seconds ago (through the gate:
    a linked ``control/counts`` or hour folder is not followed; only real folders are removed, fd-based)."""
    top = _io.control_dir(root) / _io.COUNTS_DIR
    horizon = time.time() - older_than
    for name in _io.list_folder(top, root):
        hour = hour_of(name)
        if hour is not None and hour + HOUR < horizon:
            try:
                _files.remove_tree(top / name, root=root)
            except (OSError, CorruptFileError) as exc:  # a link or a file named like an hour: left, and said
                _io.note_problem(top / name, getattr(exc, "reason", None) or str(exc))


def prune_files(directory: Path, older_than: float, keep: Iterable[Path] = (), *, root: Path) -> None:
    """Remove regular files of *directory* (under ``control/`` of *root*) not modified for *older_than*
    seconds (dead processes' leftovers), through the gate: a linked folder is not followed."""
    try:
        _files.remove_older(directory, root=root, before=time.time() - older_than, keep={Path(p).name for p in keep})
    except CorruptFileError as exc:
        _io.note_problem(exc.path, exc.reason)
