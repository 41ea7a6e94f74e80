"""The operator's decisions about legacy files that are not imported (``control/accepted.jsonl``).

``migrate`` never says ok while content stayed behind: a file listed as invalid, or a JSON document
under the legacy folders that the layout has no place for (:mod:`federation.transfer.leftovers`),
fails it (exit 3) until an operator accepts that file::

    federation migrate --accept nodes/bob/inbox.json --reason "old client's cache; bob re-reads it"

The decision is appended to ``control/accepted.jsonl``: the path (relative to the root), the SHA-256
and size of the content accepted, the reason, when and who.  While the file's content is unchanged,
``migrate`` and ``doctor`` list it as accepted and no longer fail on it; a file whose content changed
since fails again (it holds something nobody looked at).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from ..errors import CorruptFileError, ValidationError
from .. import rollout
from ..stores.files import read_regular

__all__ = ["ACCEPTED_FILE", "accepted_path", "apply_decisions", "settle", "accept", "decisions"]

ACCEPTED_FILE = "accepted.jsonl"

#: what a file is listed as, in a decision
INVALID, NOT_IMPORTED = "invalid", "not imported"


def accepted_path(root: Path) -> Path:
    return rollout.control_dir(root) / ACCEPTED_FILE


def _relative(root: Path | str, path: str) -> str:
    return os.path.relpath(os.path.abspath(path), os.path.abspath(root))


def _digest(path: str, root: Path | str) -> tuple[str, int] | None:
    """(SHA-256, bytes) of the regular file *path* below *root* (read through the gate: no link followed at
    any component); None for a link, FIFO, folder, a file over the size bound, or one that is gone."""
    try:
        raw = read_regular(path, root=root)
    except (CorruptFileError, OSError):
        return None
    return None if raw is None else (hashlib.sha256(raw).hexdigest(), len(raw))


def decisions(root: Path) -> dict[str, dict[str, Any]]:
    """The last decision recorded for each path (relative to *root*)."""
    out: dict[str, dict[str, Any]] = {}
    for record in rollout.read_lines(accepted_path(root)):
        if isinstance(record.get("path"), str) and isinstance(record.get("sha256"), str):
            out[record["path"]] = record
    return out


def apply_decisions(root: Path, invalid: list[dict], unimported: list[dict]
                    ) -> tuple[list[dict], list[dict], list[dict[str, Any]]]:
    """(invalid, not imported, accepted): the files an operator accepted with their content unchanged move
    from the first two lists to the third (``{"path", "reason", "at", "by", "sha256"}``)."""
    recorded = decisions(root)
    if not recorded:
        return invalid, unimported, []
    accepted: dict[str, dict[str, Any]] = {}
    for path in sorted({i["path"] for i in invalid} | {n["path"] for n in unimported}):
        record = recorded.get(_relative(root, path))
        if record is None:
            continue
        digest = _digest(path, root)
        if digest is not None and digest[0] == record["sha256"]:
            accepted[path] = {"path": path, "reason": record.get("reason"), "at": record.get("at"),
                              "by": record.get("by"), "sha256": record["sha256"]}
    return ([i for i in invalid if i["path"] not in accepted], [n for n in unimported if n["path"] not in accepted],
            list(accepted.values()))


def settle(root: Path, result: Any) -> Any:
    """*result* (a :class:`~federation.transfer.migrate.MigrationResult`) with the files an operator accepted,
    content unchanged, moved from ``invalid`` / ``not_imported`` to ``accepted`` (what ``federation migrate``
    shows and its exit code judges)."""
    result.invalid, result.not_imported, result.accepted = apply_decisions(root, result.invalid, result.not_imported)
    return result


def accept(root: Path, path: str, reason: str | None, invalid: list[dict], unimported: list[dict],
           accepted: list[dict] = ()) -> dict[str, Any]:
    """Record the operator's decision to leave *path* (absolute, relative to *root* or to the working folder)
    out of the import.

    *invalid*, *unimported* and *accepted*: what ``migrate`` lists now; a path in none of the first two is refused
    (:class:`ValidationError`), as is a file that is not a regular one (a link or FIFO holds nothing to
    accept: remove it) and a missing or empty *reason*.
    """
    if not reason or not reason.strip():
        raise ValidationError("--accept needs --reason TEXT: why this file may stay out of the database")
    listed = {os.path.abspath(i["path"]) for i in invalid} | {os.path.abspath(n["path"]) for n in unimported}
    # as listed (absolute), relative to the root, or relative to the working folder
    options = [os.path.normpath(os.path.abspath(os.path.join(root, path))), os.path.abspath(path)]
    full = next((o for o in options if o in listed), options[0])
    rel = _relative(root, full)
    if rel == os.curdir or rel.split(os.sep)[0] == os.pardir:
        raise ValidationError(f"{path} is not a file under the federation root {root}")
    findings = [i["reason"] for i in invalid if os.path.abspath(i["path"]) == full]
    documents = [n for n in unimported if os.path.abspath(n["path"]) == full]
    if not findings and not documents:
        done = [a for a in accepted if os.path.abspath(a["path"]) == full]
        if done:
            raise ValidationError(f"{path} is already accepted, its content unchanged since ({done[0]['by']}, "
                                  f"{done[0]['at']}: {done[0]['reason']}): nothing to do")
        raise ValidationError(f"{path} is neither invalid nor left out of the import (`federation migrate --dry-run` "
                              "lists both): nothing to accept")
    digest = _digest(full, root)
    if digest is None:
        raise ValidationError(f"{path} is not a regular file (a link, FIFO, socket or folder): there is no content "
                              "to accept; remove it, or put the file it should be in its place")
    record: dict[str, Any] = {"path": rel, "sha256": digest[0], "bytes": digest[1], "reason": reason.strip(),
                              "at": rollout.iso(rollout.utcnow()), "by": rollout.who(),
                              "listed_as": INVALID if findings else NOT_IMPORTED}
    if findings:
        record["findings"] = findings
    else:
        record["records"] = documents[0]["records"]
    rollout.append_line(accepted_path(root), record, durable=True)
    return record
