"""The control plane's files under ``$FEDERATION_ROOT/control/``.

Outside ``nodes/`` and ``shared/``, so it survives ``archive-legacy``, is shared
by every host that mounts the root, and is readable while the database is down.

    control/flag.json                      the live flag (written atomically, fsynced)
    control/history.jsonl                  every change of the flag, append-only
    control/syncs.jsonl                    completed ``federation sync`` runs (for the guards)
    control/fleet/<host>-<pid>.json        each process's announcement
    control/counts/<host>-<pid>-<t>.json   each process's counted comparisons
    control/mismatches/<host>-<pid>.jsonl  each process's recent mismatches (capped)
"""

from __future__ import annotations

import contextlib
import fcntl
import getpass
import json
import os
import socket
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from ..domain.moments import parse_iso  # noqa: F401 - the control files' timestamps, read by the rollout modules

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


def write_atomic(path: Path, payload: bytes, *, durable: bool = False, make_parents: bool = True) -> None:
    """Write *payload* to *path* via a temp file in the same folder + rename.

    durable: fsync the file before the rename and the folder after it (the
    flag: an operator's decision must survive a power cut).
    """
    directory = path.parent
    if make_parents:
        directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if durable:
        with contextlib.suppress(OSError):  # not every filesystem lets a folder be fsynced
            dfd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)


def dumps(data: Any) -> bytes:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def append_line(path: Path, record: dict, *, durable: bool = False) -> None:
    """Append one JSON line with a single ``write`` on an ``O_APPEND`` descriptor."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, dumps(record) + b"\n")
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)


def read_lines(path: Path) -> list[dict]:
    """The JSON objects of a JSON-lines file; torn or foreign lines are skipped."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return []
    out = []
    for line in raw.splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            out.append(record)
    return out


@contextlib.contextmanager
def control_lock(root: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``control/.lock`` (one writer of the flag at a time)."""
    directory = control_dir(root)
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock
