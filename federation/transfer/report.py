"""The consistency report: the whole file tree against the whole database.

``federation report`` = ``python scripts/consistency_report.py``.  Table by
table: row counts, keys missing on either side, and records that differ, with
a field-level diff of the first few (the shim's own :func:`shim.normalize` and
:func:`shim.field_diff`, so the report and the shadow reads agree on what
"equal" means).  Only unread messages have a file counterpart.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from shim import field_diff, normalize

from .. import config
from .rows import TABLES, TreeRows, key_text, read_db, read_tree
from ..stores.database import database_exists
from ..domain.entities import Entity

__all__ = ["TableReport", "Report", "Sides", "read_sides", "compare_sides", "build_report", "compare_table", "DIFF_LIMIT"]

#: How many differing records of a table get a field-level diff.
DIFF_LIMIT = 5


@dataclasses.dataclass
class TableReport:
    files: int
    rows: int
    missing_in_db: list[tuple] = dataclasses.field(default_factory=list)
    missing_in_files: list[tuple] = dataclasses.field(default_factory=list)
    different: list[tuple] = dataclasses.field(default_factory=list)
    diffs: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    @property
    def consistent(self) -> bool:
        return not (self.missing_in_db or self.missing_in_files or self.different)

    def to_json(self) -> dict[str, Any]:
        return {"files": self.files, "rows": self.rows,
                "missing_in_db": [key_text(k) for k in self.missing_in_db],
                "missing_in_files": [key_text(k) for k in self.missing_in_files],
                "different": [key_text(k) for k in self.different], "diffs": self.diffs}


@dataclasses.dataclass
class Report:
    entities: dict[str, TableReport]
    invalid: list[dict[str, str]]

    @property
    def consistent(self) -> bool:
        return all(t.consistent for t in self.entities.values())

    def to_json(self) -> dict[str, Any]:
        return {"consistent": self.consistent, "entities": {n: t.to_json() for n, t in self.entities.items()},
                "invalid": self.invalid}


def compare_table(table: Entity, files: dict[tuple, tuple], rows: dict[tuple, tuple],
                  diff_limit: int = DIFF_LIMIT) -> TableReport:
    """Compare one table's file rows with its database rows, key by key."""
    out = TableReport(files=len(files), rows=len(rows))
    cols = table.columns
    for key, frow in files.items():
        drow = rows.get(key)
        if drow is None:
            out.missing_in_db.append(key)
            continue
        if frow == drow:  # the common case, without building dicts
            continue
        a, b = normalize(dict(zip(cols, frow))), normalize(dict(zip(cols, drow)))
        if a == b:
            continue
        out.different.append(key)
        if len(out.diffs) < diff_limit:
            out.diffs += [{"key": key_text(key), "field": f, "files": va, "db": vb} for f, va, vb in field_diff(a, b)]
    out.missing_in_files = [k for k in rows if k not in files]
    for keys in (out.missing_in_db, out.missing_in_files, out.different):
        keys.sort()
    return out


@dataclasses.dataclass
class Sides:
    """The rows of both sides: what a report compares and ``sync`` copies."""

    files: TreeRows
    db: dict[str, dict[tuple, tuple]]


def read_sides(root: Path | None = None, *, store: Any = None, progress: bool = False) -> Sides:
    """Read the legacy tree under *root* and the database as rows (never writes to either).

    A SQLite database that does not exist yet reads as empty, and is not created.
    """
    settings = config.settings()
    root = Path(root) if root is not None else settings.root
    files = read_tree(root, progress=progress)
    if store is None and database_exists(settings):
        from ..stores.sqlstore import get_store

        store = get_store(settings)
    return Sides(files, read_db(store) if store is not None else {t.name: {} for t in TABLES})


def compare_sides(sides: Sides, diff_limit: int = DIFF_LIMIT) -> Report:
    """The report of *sides*, table by table."""
    entities = {t.name: compare_table(t, sides.files.rows[t.name], sides.db[t.name], diff_limit) for t in TABLES}
    return Report(entities, sides.files.invalid)


def build_report(root: Path | None = None, *, store: Any = None, progress: bool = False,
                 diff_limit: int = DIFF_LIMIT) -> Report:
    """Compare the legacy tree under *root* with the database (never writes to either).

    A SQLite database that does not exist yet is compared as empty, and not created.
    """
    return compare_sides(read_sides(root, store=store, progress=progress), diff_limit)
