"""What every read of the file store shares: an unreadable legacy file skipped and logged once, a folder
listed without following a link, pages of records oldest first.

The file store's bodies (``file_messages``, ``file_delivery``, ``file_nodes``, ``file_polls``,
``file_sessions``, ``file_tasks``) read the legacy tree through the gate (:mod:`federation.stores.files`)
and skip what cannot be a record of the legacy format (CONTRACT "Untrusted files"): a read repeats every
tick, so each file and reason is logged once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .._logging import library_logger
from ..errors import CorruptFileError, ValidationError
from .files import Tree, list_dir, read_json

__all__ = ["skip", "read_or_skip", "listed", "page", "by_creation"]

_reported: set[tuple[str, str]] = set()


def skip(path: Path | str, reason: str) -> None:
    """Log an unreadable legacy file a read skips, once per file and reason (reads repeat every tick)."""
    key = (str(path), reason)
    if key in _reported:
        return
    if len(_reported) > 10000:
        _reported.clear()
    _reported.add(key)
    library_logger("federation.files").warning("legacy_file_invalid", path=str(path), reason=reason,
                                               action="skipped; `federation migrate --dry-run` lists it")


def read_or_skip(t: Tree, path: Path) -> Any:
    """The JSON of the bookkeeping file *path*; None when it is gone, or unreadable (skipped and logged once)."""
    try:
        return read_json(path, root=t.root)
    except CorruptFileError as exc:
        skip(path, exc.reason)
        return None


def listed(t: Tree, directory: Path) -> list[str]:
    """The names in *directory*, reached from the root without following a link; none (logged) when it, or a
    folder above it, is a link or a file: nothing is read through it."""
    try:
        return list_dir(directory, root=t.root)
    except CorruptFileError as exc:
        skip(Path(exc.path), exc.reason)
        return []


def page(records: list[dict], limit: int | None, after: str | None, what: str) -> list[dict]:
    """*records* (oldest first) after the one whose id is *after*, at most *limit*."""
    if after is not None:
        for i, r in enumerate(records):
            if r["id"] == after:
                records = records[i + 1:]
                break
        else:
            raise ValidationError(f"after {after!r} is not the id of a {what}: page from the start (after=None)")
    return records if limit is None else records[:limit]


def by_creation(record: dict) -> tuple[str, str]:
    return (str(record.get("created_at") or ""), str(record["id"]))
