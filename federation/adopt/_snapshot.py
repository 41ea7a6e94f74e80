"""The legacy documents a call touches, read and put back as they were (a database-first write that failed)."""

from __future__ import annotations

import dataclasses
import json
import stat
from pathlib import Path
from typing import Any

from ..domain import clock as _clock, layout as _layout
from ..stores import files as _files
from ..errors import CorruptFileError
from ._declare import AdoptedWriteError


# ---------------------------------------------------------------------------
# files before a call, to put back when the database refuses


def _json_names(folder: Path, root: Path) -> set[str]:
    """The message files of *folder*, through the gate: regular files only (a link or FIFO there is never
    snapshotted, restored or removed), none when the folder is missing or is a link."""
    try:
        return {n for n, st in _files.scan_dir(folder, root=root)
                if _layout.is_document_name(n) and stat.S_ISREG(st.st_mode)}
    except (CorruptFileError, NotADirectoryError):
        return set()


def _document_path(tree: _files.Tree, kind: str, owner: str) -> Path:
    return _layout.document_file(tree, kind, owner, owner)


@dataclasses.dataclass
class _Snapshot:
    """The bytes of a file (None: absent), or of every message file of a folder."""

    path: Path
    files: dict[str, bytes | None]
    root: Path
    folder: bool = False

    @classmethod
    def of(cls, path: Path, root: Path) -> "_Snapshot":
        return cls(path, {path.name: _read_bytes(path, root)}, root)

    @classmethod
    def of_folder(cls, folder: Path, root: Path) -> "_Snapshot":
        return cls(folder, {n: _read_bytes(folder / n, root) for n in _json_names(folder, root)}, root, folder=True)

    def restore(self, only: list[str] | None = None) -> None:
        """Put the files back as they were (a file that did not exist is removed); new message files go."""
        folder = self.path if self.folder else self.path.parent
        names = list(self.files) if only is None else only
        for name in names:
            _put_bytes(folder / name, self.files.get(name), self.root)
        if self.folder and only is None:
            for name in _json_names(folder, self.root) - set(self.files):
                _put_bytes(folder / name, None, self.root)


def _read_doc(path: Path, expect: type, default: Any, root: Path) -> Any:
    """A legacy document through the gate (no link followed, only a regular file, size bounded), parsed as
    the adopter's own function parses it; one that does not parse at once (torn, too deep, not *expect*)
    is read again by the gate's bounded reader, which waits a torn file out or says what is wrong."""
    raw = _files.read_regular(path, root=root)
    if raw is None:
        return default
    data = _parse_or_none(raw)
    if isinstance(data, expect):
        return data
    return _files.read_json(path, expect, default, root=root)


def _parse_or_none(raw: bytes | None) -> Any:
    """*raw* parsed (the bytes the adopter's own function reads as they are), or None: absent, torn, too
    deep (the callers then read the file through the gate, which says what is wrong with it)."""
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        return None


def _read_bytes(path: Path, root: Path) -> bytes | None:
    """The bytes of a legacy file through the gate (no link followed, never a FIFO); None when absent."""
    return _files.read_regular(path, root=root)


def _put_bytes(path: Path, raw: bytes | None, root: Path) -> None:
    if raw is None:
        _files.remove(path, root=root)
        return
    _files.write_bytes(path, raw, root=root)  # a temp file made with O_EXCL + rename, through the gate


def _files_to_db(store: Any, tree: _files.Tree, paths: list[Path], docs: set[tuple[str, str]]) -> None:
    """Make the database rows of the legacy documents *docs* equal what their files hold now."""
    from ..transfer.rows import read_files
    from ..transfer.sync import repair_documents

    rows = read_files(tree, paths)
    if rows.invalid:
        bad = rows.invalid[0]
        raise AdoptedWriteError(f"{bad['path']}: {bad['reason']}: the database keeps its record")
    store.db.write(lambda tx: repair_documents(tx, rows, docs, _clock.now()))
