"""Counted consistency in memory: a process's :class:`Tally` of shadow comparisons per minute, entity and
phase, and its sampled mismatches, until :mod:`federation.rollout._counts` writes them (as
:mod:`federation.rollout._cells` spells the files)."""

from __future__ import annotations

import bisect
import json
import os
import threading
import time
from typing import Any

from . import _io
from ._cells import BUCKET_SECONDS, HOUR, LATENCY_BOUNDS_MS, MISMATCH_CAP, SIDES, _BOUNDS_S, _cell_bytes

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


#: a cell is sealed (serialised once, its objects dropped) this long after its bucket ended: an observation
#: that comes later still (a thread that read the clock before the bucket ended) opens it again
SEAL_AFTER_S = 5


class Tally:
    """One process's counts not yet written for good, and its mismatches not yet written.

    Memory holds the current hour (and past hours not yet written): the cells of buckets still open as
    objects, and those of ended buckets sealed, as the bytes their file holds (issue 30: the hour's
    per-second counts kept as Python objects, and rebuilt as a document at every flush, grew a server's
    memory through each hour and fragmented it; a sealed minute is a few hundred bytes, serialised once).
    """

    def __init__(self, width: int = BUCKET_SECONDS) -> None:
        self._lock = threading.Lock()
        self.width = width
        self.cells: dict[tuple[int, str, int], Cell] = {}
        self.sealed: dict[tuple[int, str, int], bytes] = {}
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
                cell = self.cells[key] = self._reopen(key)
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

    def _reopen(self, key: tuple[int, str, int]) -> Cell:
        """A new cell for *key*, or its sealed one opened again (a late observation); under the lock."""
        blob = self.sealed.pop(key, None)
        return Cell() if blob is None else Cell.from_json(json.loads(blob))

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

    def take(self) -> tuple[dict[int, list[tuple[tuple[int, str, int], bytes]]], list[dict]]:
        """({hour: every cell of that hour, as the bytes its file holds} for the hours in memory, the pending
        mismatches).

        Cells of buckets that ended :data:`SEAL_AFTER_S` ago are sealed here (serialised once; only the open
        buckets' are serialised at each flush).  Cells of past hours leave memory here, as once written they
        do not change.
        """
        now = time.time()
        current = int(now) // HOUR * HOUR
        with self._lock:
            for key, cell in list(self.cells.items()):
                if key[0] + self.width + SEAL_AFTER_S <= now:
                    self.sealed[key] = _cell_bytes(key, cell.to_json())
                    del self.cells[key]
            hours: dict[int, list[tuple[tuple[int, str, int], bytes]]] = {}
            for key, blob in list(self.sealed.items()):
                hour = key[0] - key[0] % HOUR
                hours.setdefault(hour, []).append((key, blob))
                if hour < current:
                    del self.sealed[key]
            for key, cell in list(self.cells.items()):
                hour = key[0] - key[0] % HOUR
                hours.setdefault(hour, []).append((key, _cell_bytes(key, cell.to_json())))
                if hour < current:
                    del self.cells[key]
            pending, self.pending = self.pending, []
            self.dirty = False
        return hours, pending

    def give_back(self, hours: dict[int, list[tuple[tuple[int, str, int], bytes]]], pending: list[dict]) -> None:
        """A flush failed: past hours' cells come back, to be written by the next one."""
        with self._lock:
            for items in hours.values():
                for key, blob in items:
                    if key not in self.cells and key not in self.sealed:
                        self.sealed[key] = blob
            self.pending[:0] = pending[-MISMATCH_CAP:]
            self.dirty = True

    def reset(self) -> None:
        with self._lock:
            self.cells.clear()
            self.sealed.clear()
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
