"""The control plane's files under ``$FEDERATION_ROOT/control/``.

Outside ``nodes/`` and ``shared/``, so it survives ``archive-legacy``, is shared
by every host that mounts the root, and is readable while the database is down.

    control/flag.json                      the live flag (written atomically, fsynced)
    control/history.jsonl                  every change of the flag, append-only
    control/syncs.jsonl                    completed ``federation sync`` runs (for the guards)
    control/accepted.jsonl                 legacy files an operator let stay out (``migrate --accept``)
    control/fleet/<host>-<pid>.json        each process's announcement
    control/counts/<hour>/<host>-<pid>-<t>.json    each process's counted comparisons of an hour
    control/counts/<hour>/<host>-<pid>-<t>.rollup  ... its closed minutes summed (what most windows read)
    control/counts/by-minute/, by-hour/    the fleet's counts merged as they age
    control/mismatches/<host>-<pid>.jsonl  each process's recent mismatches (capped)
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import math
import socket
import stat
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from ..domain.layout import LOCK_DIR
from ..domain.moments import parse_iso  # noqa: F401 - the control files' timestamps, read by the rollout modules
from ..stores import files as _files
from ..stores.files import loads_bounded, read_regular
from ..errors import CorruptFileError

CONTROL_DIR = "control"
FLAG_FILE = "flag.json"
HISTORY_FILE = "history.jsonl"
SYNCS_FILE = "syncs.jsonl"
FLEET_DIR = "fleet"
COUNTS_DIR = "counts"
MISMATCH_DIR = "mismatches"
LOCK_FILE = ".lock"

HOST = socket.gethostname()


def control_dir(root: Path) -> Path:
    return Path(root) / CONTROL_DIR


def who() -> str:
    """``user@host`` of the operator (recorded with every change of the flag)."""
    try:
        user = getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name in a bare container
        user = str(os.getuid())
    return f"{user}@{HOST}"


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat(timespec="microseconds")


def aware(moment: datetime | None) -> datetime | None:
    if moment is None:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def write_atomic(path: Path, payload: bytes, *, durable: bool = False) -> None:
    """Write *payload* to control file *path* via a temp file (O_EXCL) in the same folder + rename, through
    the gate (:func:`federation.stores.files.write_bytes`: no link followed under the root, ``control/``
    included).

    durable: fsync the file before the rename and the folder after it (the
    flag: an operator's decision must survive a power cut).
    """
    _files.write_bytes(path, payload, root=_anchor(path), durable=durable)


def append_bytes(path: Path, payload: bytes, *, durable: bool = False) -> None:
    """Append *payload* to control file *path* through the gate (:func:`federation.stores.files.append_bytes`)."""
    _files.append_bytes(path, payload, root=_anchor(path), durable=durable)


def list_folder(path: Path, root: Path) -> list[str]:
    """The names in control folder *path* below *root*, reached without following a link; [] when it is
    missing, or is a link or a file (noted: `rollout status` shows it)."""
    try:
        return _files.list_dir(path, root=root)
    except NotADirectoryError:
        return []
    except CorruptFileError as exc:
        note_problem(exc.path, exc.reason)
        return []


def invalid_control_files(root: Path) -> list[dict[str, str]]:
    """``[{"path", "reason"}]`` of what is under ``control/`` and ``.locks/`` but is not a regular file or a
    real folder (a link, FIFO, socket, device), or a regular file with another hard link (appends and
    locks refuse it); ``control/`` or ``.locks/`` itself included.  Looked at through the gate: nothing
    is followed or opened.  ``doctor`` lists them."""
    out = []
    for top in (control_dir(root), Path(root) / LOCK_DIR):
        try:
            st = _files.lstat(top, root=root)
        except (CorruptFileError, OSError) as exc:
            out.append({"path": str(top), "reason": getattr(exc, "reason", None) or str(exc)})
            continue
        if st is None:
            continue
        if not stat.S_ISDIR(st.st_mode):
            out.append({"path": str(top), "reason": _files.kind_of(st.st_mode)})
            continue
        try:
            for entry in _files.walk_tree(top, root=root, max_depth=4):
                mode = entry.stat.st_mode
                if stat.S_ISDIR(mode):
                    continue
                if not stat.S_ISREG(mode):
                    out.append({"path": str(entry.path), "reason": _files.kind_of(mode)})
                elif entry.stat.st_nlink > 1:
                    out.append({"path": str(entry.path), "reason": f"has {entry.stat.st_nlink} hard links (another "
                                                                   "name may be outside the root): not appended to"})
        except (CorruptFileError, OSError) as exc:
            out.append({"path": str(getattr(exc, "path", top)), "reason": getattr(exc, "reason", None) or str(exc)})
    return out


def dumps(data: Any) -> bytes:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def append_line(path: Path, record: dict, *, durable: bool = False) -> None:
    """Append one JSON line with a single ``write`` on an ``O_APPEND`` descriptor, through the gate
    (:func:`federation.stores.files.append_bytes`: never through a link, never to a FIFO or to a file
    with another hard link)."""
    _files.append_bytes(path, dumps(record) + b"\n", root=_anchor(path), durable=durable)


# ---------------------------------------------------------------------------
# Reading control files: they are written by every host that mounts the root, so they are
# untrusted input (CONTRACT "Untrusted files").  A reader never follows a link, never opens
# a FIFO or device, bounds size and nesting, refuses NaN/Infinity; what it cannot use it
# skips and notes here, and `rollout status` and the dashboard show the notes.

#: the largest control file read (counts of one process and hour are a few hundred kB)
MAX_CONTROL_BYTES = 16 * 1024 * 1024
#: how long a noted problem is shown after it was last seen
PROBLEM_SECONDS = 120.0
_problems: dict[str, tuple[str, float]] = {}
_problems_lock = threading.Lock()


def note_problem(path: Path | str, reason: str) -> None:
    """Remember that control file *path* was skipped (or partly skipped), and why."""
    with _problems_lock:
        if len(_problems) > 1000:
            _problems.clear()
        _problems[str(path)] = (reason, time.monotonic())


def problems() -> list[dict[str, str]]:
    """``[{"path", "reason"}]`` of the control files readers skipped lately, by path."""
    horizon = time.monotonic() - PROBLEM_SECONDS
    with _problems_lock:
        return [{"path": p, "reason": r} for p, (r, t) in sorted(_problems.items()) if t >= horizon]


def _root_of(path: Path) -> Path | None:
    """The federation root above a control file (the folder holding ``control/``)."""
    for parent in Path(path).parents:
        if parent.name == CONTROL_DIR:
            return parent.parent
    return None


def _anchor(path: Path) -> Path:
    """The root the gate walks from to control file *path*: the federation root above ``control/``
    (a path not under one: its own folder, so that at least the file itself is never followed)."""
    return _root_of(path) or Path(path).parent


def read_bytes(path: Path) -> bytes | None:
    """The bytes of control file *path* (None when missing); CorruptFileError for a link, FIFO, device,
    folder or oversized file, none of which is followed or opened for reading."""
    return read_regular(path, root=_anchor(path), limit=MAX_CONTROL_BYTES)


def read_document(path: Path) -> Any:
    """The JSON value of control file *path*, None when missing; ValueError (with the reason) otherwise."""
    try:
        raw = read_bytes(path)
    except CorruptFileError as exc:
        raise ValueError(exc.reason) from None
    except OSError as exc:
        raise ValueError(exc.strerror or str(exc)) from None
    if raw is None:
        return None
    try:
        return loads_bounded(raw)
    except UnicodeDecodeError:
        raise ValueError("not UTF-8") from None
    except ValueError as exc:
        raise ValueError(f"not valid JSON ({exc})") from None


def read_lines(path: Path) -> list[dict]:
    """The JSON objects of a JSON-lines file; torn or foreign lines are skipped (and noted)."""
    try:
        raw = read_bytes(path)
    except (CorruptFileError, OSError) as exc:
        note_problem(path, getattr(exc, "reason", None) or str(exc))
        return []
    if raw is None:
        return []
    out, bad = [], 0
    for line in raw.splitlines():
        if not line.strip():
            continue
        try:
            record = loads_bounded(line)
        except ValueError:  # UnicodeDecodeError too
            bad += 1
            continue
        if isinstance(record, dict):
            out.append(record)
        else:
            bad += 1
    if bad:
        note_problem(path, f"{bad} line(s) are not JSON objects (torn, foreign, too deep or NaN): skipped")
    return out


def count(value: Any) -> int | None:
    """*value* as a count (a finite, non-negative whole number), or None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
        return None
    return int(value) if value >= 0 else None


def finite(value: Any) -> float | None:
    """*value* as a finite, non-negative number, or None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) and value >= 0 else None


def text(value: Any) -> str | None:
    """*value* when it is a string, else None (a control file's text field)."""
    return value if isinstance(value, str) else None


@contextlib.contextmanager
def control_lock(root: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``control/.lock`` (one writer of the flag at a time), through the gate:
    a linked ``control/`` or a dangling link at ``.lock`` is refused (CorruptFileError), nothing made outside."""
    with _files.flock_file(control_dir(root) / LOCK_FILE, root):
        yield
