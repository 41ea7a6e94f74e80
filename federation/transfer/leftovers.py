"""Files under the legacy folders that nothing is imported from: the JSON documents the layout has no place for.

``migrate`` never says ok while content stayed behind: a JSON document under ``nodes/`` or ``shared/``
that the layout does not define (``nodes/bob/outbox.json``, a list of messages some legacy code
keeps) is listed as not imported, with what it holds, and fails the migration (exit 3) like an invalid
file, until an operator accepts it (:mod:`federation.operations.accepted`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import CorruptFileError
from ..stores.files import loads_bounded, lstat, read_regular
from .rows import UNKNOWN_FILE

__all__ = ["not_imported"]


def _document(path: str, root: Path | str) -> dict[str, Any] | None:
    """``{"path", "records", "bytes"}`` when *path* is a JSON document (named ``*.json``, or holding a JSON
    list or object), else None.  records: the items of a list or object; None when it does not parse."""
    try:
        raw = read_regular(path, root=root)  # through the gate: no link followed, nothing outside the root
    except CorruptFileError:  # over the size bound: its name decides
        try:
            found = lstat(Path(path), root=root)
        except (OSError, CorruptFileError):
            return None
        if found is None:
            return None
        size = found.st_size
        return {"path": path, "records": None, "bytes": size} if path.endswith(".json") else None
    except OSError:
        return None
    if raw is None:
        return None  # gone since it was listed: nothing stayed behind
    try:
        value = loads_bounded(raw)
    except ValueError:  # not UTF-8, not JSON, too deep, NaN
        value = None
    records = len(value) if isinstance(value, (list, dict)) else None
    if records is None and not path.endswith(".json"):
        return None  # notes, a README, a backup copy: not a document (listed in dropped_fields as a whole file)
    return {"path": path, "records": records, "bytes": len(raw)}


def not_imported(dropped_fields: list[dict[str, str]],
                 root: Path | str) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """(the JSON documents the layout has no place for, *dropped_fields* without them).

    *dropped_fields*: a read tree's (:class:`~federation.transfer.rows.TreeRows`), where a file the layout
    does not define is a whole-file entry (``UNKNOWN_FILE``); *root*: the tree's root (files are read below it
    through the gate)."""
    found, rest = [], []
    for dropped in dropped_fields:
        entry = _document(dropped["path"], root) if dropped["field"] == UNKNOWN_FILE else None
        if entry is None:
            rest.append(dropped)
        else:
            found.append(entry)
    return found, rest
