"""The fleet: every process using the federation, as it announces itself.

Each process rewrites ``control/fleet/<host>-<pid>.json`` every few seconds
(and removes it at a clean exit); a reader marks a process not seen for
``FEDERATION_FLEET_TIMEOUT`` seconds (30) as gone.
"""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path

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
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    out = []
    for name in names:
        if not name.endswith(".json") or name.startswith("."):
            continue
        try:
            doc = json.loads((directory / name).read_bytes())
        except (OSError, ValueError):
            continue  # removed meanwhile (a clean exit), or foreign
        if not isinstance(doc, dict):
            continue
        seen = _io.parse_iso(doc.get("last_seen"))
        entry = {k: doc.get(k) for k in ("host", "pid", "agent", "phase", "source", "version", "started_at",
                                         "last_seen")}
        entry["alive"] = seen is not None and (now - seen).total_seconds() <= timeout
        adopted = doc.get("adopted")
        if isinstance(adopted, list) and adopted and all(isinstance(m, str) for m in adopted):
            entry["adopted"] = adopted  # modules run through federation.adopt (only when there are some)
        torn = doc.get("torn_reads")
        if isinstance(torn, int) and not isinstance(torn, bool) and torn > 0:
            entry["torn_reads"] = torn  # legacy files it saw half-written (only when it saw some)
        out.append(entry)
    out.sort(key=lambda e: (str(e["host"]), e["pid"] if isinstance(e["pid"], int) else 0))
    return out


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
