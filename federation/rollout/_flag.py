"""The live flag record and its history.

``control/flag.json`` holds the phase and the shadow sample the fleet follows;
it is validated whenever it is read, so a hand-edited or torn record is an
error naming the file, never a phase nobody chose.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

from ..stores.files import loads_bounded
from ..errors import ConfigError, CorruptFileError
from . import _io

PHASES = (1, 2, 3, 4)
#: the phase of a process that neither its environment nor the flag pins
DEFAULT_PHASE = 3
DEFAULT_SAMPLE = 1.0


class FlagError(ConfigError):
    """The flag record exists but cannot be read or is not a valid record."""


def check_phase(value: Any) -> int:
    """*value* as a phase (1-4), or :class:`ConfigError` saying what is accepted."""
    if isinstance(value, bool):
        value = None
    if isinstance(value, str) and value.strip() in ("1", "2", "3", "4"):
        value = int(value.strip())
    if not isinstance(value, int) or value not in PHASES:
        raise ConfigError(f"phase {value!r} is not accepted: use 1, 2, 3 or 4")
    return value


def check_sample(value: Any) -> float:
    """*value* as a shadow sample (0.0-1.0), or :class:`ConfigError`."""
    try:
        sample = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        sample = math.nan
    if not (0.0 <= sample <= 1.0):  # also rejects NaN
        raise ConfigError(f"sample {value!r} is not accepted: use a number from 0.0 to 1.0")
    return sample


@dataclasses.dataclass(frozen=True)
class Flag:
    phase: int
    sample: float
    set_at: str
    set_by: str
    reason: str | None = None
    forced: bool = False

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def flag_path(root: Path) -> Path:
    return _io.control_dir(root) / _io.FLAG_FILE


def parse_flag(raw: bytes, path: Path) -> Flag:
    """A validated :class:`Flag` from the bytes of *path*, or :class:`FlagError`."""
    try:  # nesting bounded before parsing, NaN/Infinity refused: never a RecursionError
        data = loads_bounded(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise FlagError(f"the live flag {path} is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise FlagError(f"the live flag {path} is not a JSON object")
    try:
        phase = check_phase(data.get("phase"))
        sample = check_sample(data.get("sample", DEFAULT_SAMPLE))
    except ConfigError as exc:
        raise FlagError(f"the live flag {path} is invalid: {exc}") from None
    set_at, set_by, reason = data.get("set_at"), data.get("set_by"), data.get("reason")
    if not isinstance(set_at, str) or _io.parse_iso(set_at) is None:
        raise FlagError(f"the live flag {path} is invalid: set_at {set_at!r} is not an ISO 8601 time")
    if not isinstance(set_by, str) or (reason is not None and not isinstance(reason, str)):
        raise FlagError(f"the live flag {path} is invalid: set_by/reason must be text")
    return Flag(phase=phase, sample=sample, set_at=set_at, set_by=set_by, reason=reason,
                forced=bool(data.get("forced", False)))


def read_flag(root: Path) -> Flag | None:
    """The live flag of *root*; None when none was ever set; :class:`FlagError` when unreadable."""
    path = flag_path(root)
    try:  # a link, FIFO, device or folder is refused without being followed or opened for reading
        raw = _io.read_bytes(path)
    except CorruptFileError as exc:
        raise FlagError(f"the live flag {path} cannot be read: {exc.reason}") from None
    except OSError as exc:
        raise FlagError(f"the live flag {path} cannot be read ({exc.strerror or exc})") from None
    if raw is None:
        return None
    return parse_flag(raw, path)


def write_flag(root: Path, flag: Flag) -> None:
    _io.write_atomic(flag_path(root), json.dumps(flag.to_json(), indent=2).encode("utf-8") + b"\n", durable=True)


# ---------------------------------------------------------------------------
# history and completed syncs


def history(root: Path) -> list[dict]:
    """Every recorded change of the flag, oldest first."""
    return _io.read_lines(_io.control_dir(root) / _io.HISTORY_FILE)


def append_history(root: Path, entry: dict) -> None:
    _io.append_line(_io.control_dir(root) / _io.HISTORY_FILE, entry, durable=True)


def last_recorded_phase(root: Path) -> int | None:
    """The phase of the last history entry (a fallback when the flag record is unreadable)."""
    for entry in reversed(history(root)):
        try:
            return check_phase(entry.get("to"))
        except ConfigError:
            continue
    return None


def last_recorded_sample(root: Path) -> float | None:
    """The sample of the last history entry that has a valid one."""
    for entry in reversed(history(root)):
        try:
            return check_sample(entry["sample"])
        except (KeyError, ConfigError):
            continue
    return None


def record_sync(root: Path, to: str, changes: int, *, forced: bool = False, reason: str | None = None) -> None:
    """Note a completed (not dry-run) ``federation sync --to TO`` for the guards (and a forced one's reason)."""
    entry: dict[str, Any] = {"at": _io.iso(_io.utcnow()), "to": to, "changes": changes, "by": _io.who()}
    if forced:
        entry.update(forced=True, reason=reason)
    _io.append_line(_io.control_dir(root) / _io.SYNCS_FILE, entry, durable=forced)


def syncs(root: Path) -> list[dict]:
    return _io.read_lines(_io.control_dir(root) / _io.SYNCS_FILE)
