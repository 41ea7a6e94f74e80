"""Counted consistency: every shadow comparison, per minute, entity and phase.

A process accumulates its counts in memory (:class:`Tally`, a few
microseconds per call) and its background thread writes them at most every
few seconds and at exit, one file per process and hour:
``control/counts/<YYYYMMDDTHH>/<host>-<pid>-<start>.json`` (so a flush
rewrites only the current hour's cells, and a reader of a window opens only
the hours it covers), and beside it a roll-up (``<host>-<pid>-<start>.rollup``: the minutes closed at
the flush summed per entity and phase, the minute in progress with its seconds) that a window holding
those minutes whole reads instead of every second.  Readers merge the files of the whole fleet.  Latencies
are fixed-bound histograms, so processes merge by adding counts and p50/p99
come from the merged histogram.  A window counts the buckets that start
inside it whole; a bucket the window cuts counts the seconds inside it (each
cell also keeps its comparisons, mismatches and errors per second), so a
window is exact to the second.  Latencies of a cut bucket are left out.

Retention (issue 30; :func:`maintain`, run by every process every few flushes
and by ``federation prune``): 10 minutes after an hour ends, the processes'
files of that hour are merged into ``control/counts/by-minute/<hour>.json``,
one file for the fleet (per entity and phase: the hour's latency histograms and
its counts per minute); 48 hours after, into ``control/counts/by-hour/<day>.json``
(per hour, entity and phase); 35 days after, they are removed.  So the files
kept are bounded by the fleet's size and the retention, not by the uptime, and
a 24-hour window reads the current hour's roll-ups and 24 small files.  A window
counts what starts inside it at the finest resolution kept (second, minute,
hour).
"""

from __future__ import annotations

import contextlib
import dataclasses
import stat
import time
from pathlib import Path
from typing import Any, Iterable

from ..errors import CorruptFileError
from ..stores import files as _files
from . import _io
from ._tally import Cell, Tally
from ._cells import (BUCKET_SECONDS, BY_HOUR, BY_MINUTE, DAY, GRACE_SECONDS, HOUR, HOURS_AFTER, KEEP_SECONDS,
                     LATENCY_BOUNDS_MS, MAINTAIN_LOCK, MINUTES_AFTER, MISMATCH_CAP, PASS_BUDGET,
                     PASS_EVERY_FLUSHES, SIDES, add_latency, append_mismatches, counts_file, day_name,
                     day_of, empty_latency, hour_name, hour_of, log, mismatch_file, quantile, read_cells,
                     read_mismatches, ROLLUP, ROLLUP_SUFFIX, rollup, rollup_name, valid_cell, write_counts, _compacted,
                     _counts_doc, _listing, _stem)


__all__ = ["BUCKET_SECONDS", "BY_HOUR", "BY_MINUTE", "Cell", "GRACE_SECONDS", "HOUR", "KEEP_SECONDS",
           "LATENCY_BOUNDS_MS", "MINUTES_AFTER", "MISMATCH_CAP", "Maintenance", "PASS_BUDGET", "PASS_EVERY_FLUSHES",
           "SIDES", "Tally", "add_latency", "append_mismatches", "counts_file", "day_name", "day_of",
           "empty_latency", "hour_name", "hour_of", "maintain", "mismatch_file", "prune_files", "quantile",
           "read_cells", "read_mismatches", "ROLLUP", "ROLLUP_SUFFIX", "rollup", "rollup_name", "valid_cell",
           "write_counts"]


# ---------------------------------------------------------------------------
# retention: counts merged as they age, and removed past KEEP_SECONDS


@dataclasses.dataclass
class Maintenance:
    """What one :func:`maintain` pass did (or, dry, would do) under ``control/``."""

    #: the processes' hour files merged into a by-minute or by-hour file
    merged: int = 0
    #: by-minute files merged into their day's by-hour file
    hours_merged: int = 0
    #: files removed once merged (after the grace period)
    removed_merged: int = 0
    #: counts files (any kind) removed past the retention
    removed_expired: int = 0
    #: mismatch files of processes not heard of for the retention, removed
    removed_mismatches: int = 0
    #: the pass stopped at its budget: more is left for the next one
    more: bool = False
    #: another process held the maintenance lock: nothing was done
    busy: bool = False

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class _Budget:
    """Files a pass may read, write or remove; None: no bound."""

    def __init__(self, files: int | None) -> None:
        self.left = files

    def spend(self, n: int = 1) -> bool:
        """True when *n* more may be spent (and spends them)."""
        if self.left is None:
            return True
        if self.left < n:
            return False
        self.left -= n
        return True



class _Merged:
    """A by-minute or by-hour file being built in memory: cells keyed by (start, entity, phase)."""

    def __init__(self, path: Path, kind: str, doc: dict | None) -> None:
        self.path, self.kind, self.dirty = path, kind, False
        self.cells: dict[tuple[int, str, int], dict] = {}
        if doc is None:
            self.doc: dict[str, Any] = {"kind": kind, "bucket_seconds": HOUR, "bounds_ms": list(LATENCY_BOUNDS_MS),
                                        **({"sources": {}} if kind == BY_MINUTE else {"hours": {}})}
        else:
            self.doc = doc
            for raw in doc["cells"]:
                cell = valid_cell(raw)
                if cell is not None:
                    self._add(cell, cell.get("minutes") if kind == BY_MINUTE else None, minute_of=None)

    def _slot(self, start: int, entity: str, phase: int) -> dict:
        key = (start, entity, phase)
        slot = self.cells.get(key)
        if slot is None:
            slot = self.cells[key] = {"start": start, "entity": entity, "phase": phase, "comparisons": 0,
                                      "mismatches": 0, "errors": 0,
                                      "latency": {side: {"counts": [0] * (len(LATENCY_BOUNDS_MS) + 1), "sum_ms": 0.0}
                                                  for side in SIDES}}
            if self.kind == BY_MINUTE:
                slot["minutes"] = {}
        return slot

    def _add(self, cell: dict, minutes: dict | None, minute_of: Any) -> None:
        start = int(cell["start"])
        hour = start - start % HOUR
        slot = self._slot(hour, cell["entity"], cell["phase"])
        for field in ("comparisons", "mismatches", "errors"):
            slot[field] += cell[field]
        for side in SIDES:
            hist = (cell.get("latency") or {}).get(side)
            if hist:
                into = slot["latency"][side]
                into["counts"] = [a + b for a, b in zip(into["counts"], hist["counts"])]
                into["sum_ms"] = round(into["sum_ms"] + hist["sum_ms"], 6)
        if self.kind != BY_MINUTE:
            return
        per = slot["minutes"]
        if minute_of is None:  # already per minute (a by-minute file read back)
            for off, counts in (minutes or {}).items():
                into = per.setdefault(str(off), [0, 0, 0])
                for i in range(3):
                    into[i] += counts[i]
            return
        seen = [0, 0, 0]
        for off, counts in (cell.get("seconds") or {}).items():
            minute = (start + int(off) - hour) // 60
            if not 0 <= minute < 60:
                continue
            into = per.setdefault(str(minute), [0, 0, 0])
            for i in range(3):
                into[i] += counts[i]
                seen[i] += counts[i]
        rest = [max(0, cell[f] - seen[i]) for i, f in enumerate(("comparisons", "mismatches", "errors"))]
        if any(rest):  # counts without seconds (an older process): at the minute the bucket starts
            into = per.setdefault(str((start - hour) // 60), [0, 0, 0])
            for i in range(3):
                into[i] += rest[i]

    def add_file(self, doc: dict) -> int:
        """Add the valid cells of a process's counts file; the number of bad cells (not added)."""
        bad = 0
        for raw in doc["cells"]:
            cell = valid_cell(raw)
            if cell is None:
                bad += 1
                continue
            self._add(cell, None, minute_of=True)
        self.dirty = True
        return bad

    def add_hour(self, doc: dict) -> None:
        """Add the cells of a by-minute file (to a by-hour file: its minutes dropped)."""
        for raw in doc["cells"]:
            cell = valid_cell(raw)
            if cell is not None:
                self._add(cell, None, minute_of=None)
        self.dirty = True

    def payload(self) -> bytes:
        self.doc["cells"] = [self.cells[k] for k in sorted(self.cells)]
        return _io.dumps(self.doc)


def _remove_names(folder: Path, names: list[str], root: Path) -> int:
    """Remove the files *names* of *folder* through the gate (a link is removed as a name, never followed);
    the number removed."""
    removed = 0
    for name in names:
        try:
            removed += bool(_files.remove(folder / name, root=Path(root)))
        except (OSError, CorruptFileError) as exc:  # e.g. a folder named like a counts file: left, and said
            _io.note_problem(folder / name, getattr(exc, "reason", None) or str(exc))
    return removed


def _sizes(folder: Path, names: list[str], root: Path) -> dict[str, tuple[int, float]]:
    """{name: (size, mtime)} of the regular files *names* in *folder* (links and others left out)."""
    wanted = set(names)
    try:
        entries = _files.scan_dir(folder, root=Path(root))
    except (OSError, CorruptFileError):
        return {}
    return {name: (st.st_size, st.st_mtime) for name, st in entries if name in wanted and stat.S_ISREG(st.st_mode)}


def maintain(root: Path, *, now: float | None = None, budget: int | None = None, keep: float = KEEP_SECONDS,
             dry_run: bool = False, wait: bool = False) -> Maintenance:
    """One pass of the counts' retention under ``control/`` (see the module's "Retention").

    - the processes' files of an hour that ended :data:`MINUTES_AFTER` ago are merged into
      ``counts/by-minute/<hour>.json`` (one file for the fleet: per entity and phase, the hour's
      latency histograms and its counts per minute), and, once it ended :data:`HOURS_AFTER` ago,
      into ``counts/by-hour/<day>.json`` (per entity, phase and hour); a merged file is removed
      :data:`GRACE_SECONDS` after the file it went into was written;
    - counts of hours that ended *keep* seconds ago and mismatch files not written for *keep*
      seconds are removed.

    At most *budget* files are read, written or removed (None: no bound); ``more`` says work is
    left.  *dry_run* counts what would be merged and removed and changes nothing.  Only one process
    maintains at a time: *wait* False returns at once (``busy``) when another one is at it.
    """
    now = time.time() if now is None else now
    result = Maintenance()
    control = _io.control_dir(root)
    names = _listing(control, root)
    if _io.COUNTS_DIR not in names and _io.MISMATCH_DIR not in names:
        return result  # nothing kept: nothing created either
    lock = contextlib.nullcontext(True) if dry_run else _files.flock_file(control / MAINTAIN_LOCK, root, wait=wait)
    with lock as held:  # a dry run writes nothing, not even the lock file
        if not held:
            result.busy = True
            return result
        spend = _Budget(budget)
        _expire(root, now, keep, spend, dry_run, result)
        _merge(root, now, keep, spend, dry_run, result)
        if spend.left is not None and spend.left <= 0:
            result.more = True
    if result.merged or result.hours_merged or result.removed_expired or result.removed_mismatches:
        log.info("rollout_counts_maintained", dry_run=dry_run, **{k: v for k, v in result.to_json().items()
                                                                   if k not in ("busy",)})
    return result


def _expire(root: Path, now: float, keep: float, spend: _Budget, dry_run: bool, result: Maintenance) -> None:
    """Remove the counts of hours that ended *keep* seconds ago, and mismatch files as old."""
    horizon = now - keep
    top = _io.control_dir(root) / _io.COUNTS_DIR
    names = _listing(top, root)
    for name in sorted(names):
        hour = hour_of(name)
        if hour is None or hour + HOUR > horizon:
            continue
        inside = [n for n in _listing(top / name, root)]
        files = inside[: spend.left] if spend.left is not None else inside
        if not files and inside:
            return
        spend.spend(len(files))
        rollups = [n for n in files if n.endswith(ROLLUP_SUFFIX)]  # removed with their files, not counted apart
        counted = [n for n in files if not n.endswith(ROLLUP_SUFFIX)]
        result.removed_expired += len(counted) if dry_run else _remove_names(top / name, counted, root)
        if not dry_run:
            _remove_names(top / name, rollups, root)
        if not dry_run and len(files) == len(inside):
            _files.remove_folder(top / name, root=Path(root))
    for sub, of in ((BY_MINUTE, lambda n: hour_of(_stem(n)) if n.endswith(".json") else None),
                    (BY_HOUR, lambda n: (lambda d: None if d is None else d + DAY - HOUR)(day_of(n)))):
        if sub not in names:
            continue
        old = [n for n in sorted(_listing(top / sub, root)) if (of(n) is not None and of(n) + HOUR <= horizon)]
        old = old[: spend.left] if spend.left is not None else old
        spend.spend(len(old))
        result.removed_expired += len(old) if dry_run else _remove_names(top / sub, old, root)
    folder = _io.control_dir(root) / _io.MISMATCH_DIR
    listed = [n for n in _listing(folder, root) if n.endswith(".jsonl") and not n.startswith(".")]
    stale = [n for n, (_, mtime) in _sizes(folder, listed, root).items() if mtime < horizon]
    stale = stale[: spend.left] if spend.left is not None else stale
    spend.spend(len(stale))
    result.removed_mismatches += len(stale) if dry_run else _remove_names(folder, stale, root)


def _merge(root: Path, now: float, keep: float, spend: _Budget, dry_run: bool, result: Maintenance) -> None:
    top = _io.control_dir(root) / _io.COUNTS_DIR
    names = _listing(top, root)
    horizon = now - keep
    days: dict[int, _Merged | None] = {}
    hours: dict[int, _Merged | None] = {}

    def day_file(day: int) -> _Merged | None:
        if day not in days:
            path = top / BY_HOUR / day_name(day)
            doc = _compacted(path, BY_HOUR)
            days[day] = None if doc is None and _files.entry_kind(path, root=Path(root)) is not None \
                else _Merged(path, BY_HOUR, doc)  # an unusable file is left as it is (and noted), not replaced
        return days[day]

    def hour_file(hour: int) -> _Merged | None:
        if hour not in hours:
            path = top / BY_MINUTE / (hour_name(hour) + ".json")
            doc = _compacted(path, BY_MINUTE)
            hours[hour] = None if doc is None and _files.entry_kind(path, root=Path(root)) is not None \
                else _Merged(path, BY_MINUTE, doc)
        return hours[hour]

    minute_files = {hour_of(_stem(n)): n for n in _listing(top / BY_MINUTE, root) if n.endswith(".json")} \
        if BY_MINUTE in names else {}
    minute_files.pop(None, None)
    # 1. the processes' files of hours that ended MINUTES_AFTER ago: into the hour's by-minute file, or
    #    into the day's by-hour file when it already holds the hour (or the hour is that old and has none)
    for name in sorted(names):
        hour = hour_of(name)
        if hour is None or hour + HOUR > now - MINUTES_AFTER or hour + HOUR <= horizon:
            continue
        if spend.left is not None and spend.left <= 0:
            break
        day = hour - hour % DAY
        by_day = day_file(day)
        if by_day is not None and (hour_name(hour) in by_day.doc["hours"] or (
                hour + HOUR <= now - HOURS_AFTER and hour not in minute_files)):
            target = by_day
            info = by_day.doc["hours"].setdefault(hour_name(hour), {"merged_at": now, "sources": {}})
            sources = info["sources"]
        else:
            target = hour_file(hour)
            if target is None:
                continue
            sources = target.doc["sources"]
        inside = _listing(top / name, root)
        files = [n for n in sorted(inside) if n.endswith(".json") and not n.startswith(".")]
        sizes = _sizes(top / name, files, root)
        done = []
        for n in files:
            merged = sources.get(n)
            if isinstance(merged, dict):  # merged before: removed once the grace is over
                if (_io.finite(merged.get("at")) or 0.0) + GRACE_SECONDS <= now and spend.spend():
                    if n in sizes and sizes[n][0] != merged.get("size"):
                        log.warning("rollout_counts_rewritten_after_merge", path=str(top / name / n),
                                    detail="a process wrote this hour again after its counts were merged "
                                           "(it could not write for an hour?): what it added is not counted")
                    done.append(n)
                continue
            if not spend.spend():
                break
            if dry_run:
                result.merged += 1
                continue
            path = top / name / n
            try:
                doc = _io.read_document(path)
            except ValueError as exc:
                _io.note_problem(path, f"{exc}: not merged (removed with its hour, past the retention)")
                continue
            if doc is None:
                continue
            if not _counts_doc(doc):
                _io.note_problem(path, "not a counts file of this version: not merged (removed with its hour, "
                                       "past the retention)")
                continue
            bad = target.add_file(doc)
            if bad:
                _io.note_problem(path, f"{bad} cell(s) not valid: not merged")
            sources[n] = {"size": sizes.get(n, (None, 0))[0], "at": now}
            result.merged += 1
        # a roll-up goes with its file (first: a reader never takes a roll-up without its file); one whose
        # file is gone (removed by a version without roll-ups) goes too
        rollups = [n for n in inside if n.endswith(ROLLUP_SUFFIX)
                   and (_stem(n) + ".json" in done or _stem(n) + ".json" not in inside)]
        if rollups and not dry_run:
            _remove_names(top / name, rollups, root)
        if done:
            result.removed_merged += len(done) if dry_run else _remove_names(top / name, done, root)
        if (done or rollups) and not dry_run and len(done) + len(rollups) == len(inside):
            _files.remove_folder(top / name, root=Path(root))
    # 2. by-minute files of hours that ended HOURS_AFTER ago: into their day's by-hour file
    for hour, name in sorted(minute_files.items()):
        if hour + HOUR > now - HOURS_AFTER or hour + HOUR <= horizon:
            continue
        day = hour - hour % DAY
        by_day = day_file(day)
        if by_day is None:
            continue
        info = by_day.doc["hours"].get(hour_name(hour))
        if info is not None and hour not in hours:  # merged before: removed once the grace is over
            if info["merged_at"] + GRACE_SECONDS <= now and spend.spend():
                result.removed_merged += 1 if dry_run else _remove_names(top / BY_MINUTE, [name], root)
            continue
        if not spend.spend():
            break
        if dry_run:
            result.hours_merged += 1
            continue
        minute = hour_file(hour)
        if minute is None:
            continue
        # what this pass merged into it is in memory: the file read back plus the new cells
        by_day.add_hour({"cells": [minute.cells[k] for k in sorted(minute.cells)]})
        sources = dict(minute.doc["sources"])
        if info is not None:
            sources.update(info["sources"])
        by_day.doc["hours"][hour_name(hour)] = {"merged_at": now, "sources": sources}
        hours[hour] = None  # not written again: the day file holds it now
        result.hours_merged += 1
    if dry_run:
        return
    for merged in [*hours.values(), *days.values()]:
        if merged is not None and merged.dirty:
            try:
                _io.write_atomic(merged.path, merged.payload())
            except OSError as exc:
                log.warning("rollout_counts_merge_failed", path=str(merged.path), error=str(exc))


def prune_files(directory: Path, older_than: float, keep: Iterable[Path] = (), *, root: Path) -> None:
    """Remove regular files of *directory* (under ``control/`` of *root*) not modified for *older_than*
    seconds (dead processes' leftovers), through the gate: a linked folder is not followed."""
    try:
        _files.remove_older(directory, root=root, before=time.time() - older_than, keep={Path(p).name for p in keep})
    except CorruptFileError as exc:
        _io.note_problem(exc.path, exc.reason)
