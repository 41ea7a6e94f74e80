"""The fleet: every process using the federation, as it announces itself.

Each process rewrites ``control/fleet/<host>-<pid>.json`` every few seconds
(and removes it at a clean exit); a reader marks a process not seen for
``FEDERATION_FLEET_TIMEOUT`` seconds (30) as gone -- and a process of its own
host at once when its pid no longer exists or now belongs to another process
(a pid reused: its start time differs from the one announced).
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

from ..errors import CorruptFileError
from ..stores import files as _files
from . import _io

#: an announcement not refreshed for this long is removed by the next process that starts
FORGET_SECONDS = 86400.0


def fleet_file(root: Path, pid: int) -> Path:
    return _io.control_dir(root) / _io.FLEET_DIR / f"{_io.HOST}-{pid}.json"


def read_fleet(root: Path, timeout: float, now: datetime | None = None) -> list[dict]:
    """Every announced process, with ``alive`` (seen within *timeout* seconds), sorted by host and pid."""
    now = now or _io.utcnow()
    directory = _io.control_dir(root) / _io.FLEET_DIR
    try:
        names = _files.list_dir(directory, root=root)
    except (FileNotFoundError, NotADirectoryError):
        return []
    except CorruptFileError as exc:  # control/ or control/fleet is a link or a file: nothing read through it
        _io.note_problem(exc.path, exc.reason)
        return []
    out = []
    for name in names:
        if not name.endswith(".json") or name.startswith("."):
            continue
        path = directory / name
        try:
            doc = _io.read_document(path)
        except ValueError as exc:  # a link, FIFO, torn or hostile file: skipped, and said
            _io.note_problem(path, str(exc))
            continue
        if doc is None:
            continue  # removed meanwhile (a clean exit)
        if not isinstance(doc, dict):
            _io.note_problem(path, "not a JSON object")
            continue
        entry = announcement(doc)
        seen = _io.parse_iso(entry["last_seen"])
        entry["alive"] = seen is not None and (now - seen).total_seconds() <= timeout and not _dead_here(doc)
        adopted = doc.get("adopted")
        if isinstance(adopted, list) and adopted and all(isinstance(m, str) for m in adopted):
            entry["adopted"] = adopted  # modules run through federation.adopt (only when there are some)
        torn = _io.count(doc.get("torn_reads"))
        if torn:
            entry["torn_reads"] = torn  # legacy files it saw half-written (only when it saw some)
            torn_at = _io.text(doc.get("torn_at"))
            if torn_at and _io.parse_iso(torn_at) is not None:
                entry["torn_at"] = torn_at  # when it last saw a new one: a writer outside the fleet
                docs = doc.get("torn_documents")
                if isinstance(docs, dict):
                    entry["torn_documents"] = {str(k)[:300]: n for k, n in list(docs.items())[:50]
                                               if _io.count(n)}
        outside = _io.count(doc.get("outside_writes"))
        if outside:
            entry["outside_writes"] = outside  # legacy files it found rewritten by no process of the fleet
            outside_at = _io.text(doc.get("outside_at"))
            if outside_at and _io.parse_iso(outside_at) is not None:
                entry["outside_at"] = outside_at  # when it last found a new one
                docs = doc.get("outside_documents")
                if isinstance(docs, dict):
                    entry["outside_documents"] = {str(k)[:300]: n for k, n in list(docs.items())[:50]
                                                  if _io.count(n)}
        out.append(entry)
    out.sort(key=lambda e: (str(e["host"]), e["pid"] if isinstance(e["pid"], int) else 0))
    return out


def start_ticks(pid: int) -> int | None:
    """When process *pid* started, in clock ticks since boot (/proc/PID/stat's starttime); None when unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            raw = fh.read()
    except OSError:
        return None
    try:  # the command name (field 2) may hold spaces and parentheses: count from the last ')'
        return int(raw[raw.rindex(b")") + 2:].split()[19])
    except (ValueError, IndexError):
        return None


def _dead_here(doc: dict) -> bool:
    """True when the announcement is of this host and its process is certainly gone: no such pid, or the
    pid now belongs to a process that started at another time (reused).  Other hosts: unknown (False)."""
    pid = doc.get("pid")
    if doc.get("host") != _io.HOST or not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OSError):
        pass  # exists (another user's), or cannot be asked
    announced = doc.get("proc_start")
    if isinstance(announced, int) and not isinstance(announced, bool):
        now = start_ticks(pid)
        return now is not None and now != announced
    return False


def announcement(doc: dict) -> dict:
    """The fields of one fleet file, each of its type or None: a pid is a whole number >= 0, a phase 1-4,
    the others text (a hand-made or hostile file can make no reader fail, nor ``--json`` invalid)."""
    phase = doc.get("phase")
    return {"host": _io.text(doc.get("host")), "pid": _io.count(doc.get("pid")), "agent": _io.text(doc.get("agent")),
            "program": _io.text(doc.get("program")),
            "phase": phase if phase in (1, 2, 3, 4) and not isinstance(phase, bool) else None,
            "source": _io.text(doc.get("source")), "version": _io.text(doc.get("version")),
            "started_at": _io.text(doc.get("started_at")), "last_seen": _io.text(doc.get("last_seen"))}


def unsafe_mix(fleet: list[dict]) -> list[tuple[dict, dict]]:
    """Pairs (a live process in phase 4, a live process in phase 1 or 2).

    Phase 4 no longer writes the files that phases 1 and 2 read from, so such
    a pair hides each other's writes.
    """
    live = [p for p in fleet if p.get("alive")]
    fours = [p for p in live if p.get("phase") == 4]
    files = [p for p in live if p.get("phase") in (1, 2)]
    return [(a, b) for a in fours for b in files]


def describe(process: dict) -> str:
    agent = f" (agent {process['agent']})" if process.get("agent") else ""
    adopted = f" adopting {', '.join(process['adopted'])}" if process.get("adopted") else ""
    return f"{process.get('host')}:{process.get('pid')}{agent}{adopted} in phase {process.get('phase')} " \
           f"[{process.get('source')}]"
