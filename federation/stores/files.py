"""The gate to the shared disk, and the low-level helpers of the legacy JSON file tree.

Every file-system operation on a path under the federation root goes through
this module (CONTRACT "One gate to the shared disk"; ``tests/test_gate.py``
keeps every other module off the disk under the root).  It is the gate's face:
its operations are written by concern in the gate's private modules, which
nothing else imports -- the walk and the looks (``_fs_walk``), the reads
(``_fs_read``), the writes and removals (``_fs_write``), the locks
(``_fs_locks``) --; the JSON of a legacy file, torn files and whether a tree
holds legacy data are this module's own.  Each operation walks
from a descriptor of the root one component at a time with
``O_NOFOLLOW|O_DIRECTORY`` (no link is followed, folders included), acts only
on regular files and real folders (checked on the descriptor), opens files
non-blocking, creates temporary files with ``O_EXCL``, and renames, removes
and lists relative to the folder descriptors it holds, so that nothing
re-resolves a path between a check and the act.  The operations:

- read: :func:`read_regular`, :func:`read_json`, :func:`read_with_stat`, :func:`read_in`/:func:`open_regular`
  (in a held folder), :class:`FolderCache` (a batch: one walk per folder);
- write: :func:`atomic_write_json`, :func:`write_bytes` (temp file with O_EXCL + rename), :func:`append_bytes`
  (O_NOFOLLOW|O_APPEND, one name only);
- remove: :func:`remove`, :func:`remove_if_unchanged`, :func:`remove_folder`, :func:`remove_older`,
  :func:`remove_tree` (fd-based);
- list and look: :func:`list_dir`, :func:`scan_dir`, :func:`walk_tree`, :func:`names_in`, :func:`lstat`,
  :func:`entry_kind`, :func:`is_regular`, :func:`has_legacy_data`, :func:`root_is_folder` (the root itself);
- folders held: :func:`folder_of`, :func:`open_folder` (made on request), :func:`rename_at` (a move between
  two held folders);
- locks: :class:`locked` (per-thread cached descriptors), :func:`flock_file`.
"""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path
from typing import Any

from .._logging import library_logger

from ..domain import layout as _layout
from ..domain import validate as _validate
from ..domain.layout import Tree  # the paths of the layout; this module reads and writes what is there
from ..errors import CorruptFileError, FileStorageError
from ._fs_locks import flock_file, locked
from ._fs_read import MAX_FILE_BYTES, FolderCache, open_regular, read_in, read_regular, read_with_stat
from ._fs_stamps import Doc as StampDoc, Look, note_outside, outside_files, outside_writes, stamp_look, stamp_written
from ._fs_walk import (Entry, entry_kind, folder_of, is_regular, kind_of, list_dir, lstat, names_in, open_folder,
                       root_is_folder, scan_dir, walk_tree)
from ._fs_write import (append_bytes, atomic_write_json, remove, remove_folder, remove_if_unchanged, remove_older,
                        remove_tree, rename_at, write_bytes)

__all__ = ["Tree", "atomic_write_json", "read_json", "locked", "read_regular", "list_dir", "check_depth",
           "MAX_FILE_BYTES", "MAX_JSON_DEPTH", "write_bytes", "append_bytes", "remove", "remove_tree", "scan_dir",
           "entry_kind", "is_regular", "folder_of", "open_folder", "rename_at", "flock_file", "walk_tree", "remove_older",
           "lstat", "root_is_folder", "names_in", "read_with_stat",
           "remove_if_unchanged", "remove_folder", "FolderCache",
           "has_legacy_data", "Entry", "kind_of", "open_regular", "read_in", "parse_document", "parse_json_bytes",
           "loads_bounded", "note_torn", "TORN_PAUSES", "torn_reads", "torn_files",
           "Look", "StampDoc", "stamp_look", "stamp_written", "note_outside", "outside_writes", "outside_files"]

#: the deepest JSON nesting read from under the root (a message holds 2 levels, a session 4, traits
#: as deep as a caller made them, within ``_validate.MAX_JSON_DEPTH``)
MAX_JSON_DEPTH = 100


def has_legacy_data(tree: Tree) -> bool:
    """True when a legacy state file is under the root: a regular file where the layout keeps a document
    (``shared/polls.json``, a session or a task, a node file, a message in ``inbox/``, ``leased/`` or ``dead/``),
    reached without following links (a link to a file outside is not legacy data).

    One look per folder: on start-up of a process, cheap on an empty or archived tree.
    """
    root = tree.root
    if is_regular(tree.polls_file, root=root):
        return True
    if any(_any_document(tree.folder(kind), root) for kind in _layout.FOLDER_OF):
        return True
    for node, st in _safe_scan(tree.nodes, root):
        if not stat.S_ISDIR(st.st_mode):
            continue
        entries = dict(_safe_scan(tree.nodes / node, root))
        if any(name in entries and stat.S_ISREG(entries[name].st_mode) for name in _layout.NODE_FILES):
            return True
        for folder in _layout.MESSAGE_DIRS:
            if folder in entries and stat.S_ISDIR(entries[folder].st_mode) \
                    and _any_document(tree.nodes / node / folder, root):
                return True
    return False


def _safe_scan(path: Path, root: Path) -> list[tuple[str, os.stat_result]]:
    try:
        return scan_dir(path, root=root)
    except (CorruptFileError, NotADirectoryError):  # a link or a file where a folder should be: no data through it
        return []


def _any_document(folder: Path, root: Path) -> bool:
    return any(_layout.is_document_name(n) and stat.S_ISREG(st.st_mode) for n, st in _safe_scan(folder, root))


def check_depth(raw: bytes, limit: int = MAX_JSON_DEPTH) -> None:
    """ValueError when the JSON text *raw* nests deeper than *limit* (:func:`_validate.check_depth`)."""
    _validate.check_depth(raw, limit)


def loads_bounded(raw: bytes, limit: int = MAX_JSON_DEPTH) -> Any:
    """``json.loads`` of untrusted bytes: depth bounded first; NaN/Infinity refused; ValueError on any problem."""
    check_depth(raw, limit)
    try:
        return json.loads(raw, parse_constant=_no_constant)
    except RecursionError:  # a second line of defence: the check above should have refused it
        raise ValueError("nested too deeply") from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def parse_json_bytes(raw: bytes) -> Any:
    """Parse a legacy file's bytes; raise ValueError with a short reason."""
    if not raw.strip():
        raise ValueError("empty file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 ({exc.reason} at byte {exc.start})") from None
    check_depth(raw)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"invalid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    except RecursionError:
        raise ValueError(f"nested deeper than {MAX_JSON_DEPTH} levels") from None


def read_json(path: Path, expect: type = dict, default: Any = None, *, root: Path | str) -> Any:
    """Read a legacy JSON file; *default* when it does not exist.

    A file that cannot be parsed, or is not a regular file (a link, FIFO,
    folder...), raises :class:`CorruptFileError` and is left exactly as it is.
    A file that does not parse is first re-read briefly: a legacy writer
    outside the shim may be writing it in place (counted, :func:`note_torn`).
    """
    reason = None
    for pause in (0.0, *TORN_PAUSES):  # the read, then re-reads while the file does not parse
        if pause:
            time.sleep(pause)
        raw = _read_raw(path, root)
        if raw is None:
            return default
        try:
            data = parse_json_bytes(raw)
        except ValueError as exc:
            reason = str(exc)
            continue
        if reason is not None:
            note_torn(str(path), recovered=True)
        return _of_type(data, path, expect)
    note_torn(str(path), recovered=False, error=reason)
    raise CorruptFileError(path, reason)


def _read_raw(path: Path, root: Path | str) -> bytes | None:
    try:
        return read_regular(path, root=root)
    except OSError as exc:  # EACCES, EIO...: typed, naming the file
        raise FileStorageError.wrap(exc, path, "read") from exc


def parse_document(raw: bytes, path: object, expect: type = dict) -> Any:
    """The JSON value of a legacy file's bytes, of type *expect*, or :class:`CorruptFileError`."""
    try:
        data = parse_json_bytes(raw)
    except ValueError as exc:
        raise CorruptFileError(path, str(exc)) from None
    return _of_type(data, path, expect)


def _of_type(data: Any, path: object, expect: type) -> Any:
    if not isinstance(data, expect):
        raise CorruptFileError(path, f"expected a JSON {expect.__name__}, found {type(data).__name__}")
    return data


# ---------------------------------------------------------------------------
# torn files: a legacy writer that is not run through the shim writes in place
# (``write_text``), so a reader may see its file empty or cut short for a moment.

log = library_logger("federation.files")

#: pauses between re-reads of a file that did not parse (about 0.2 s in all): long enough
#: for a writer of a few hundred kilobytes to finish, short enough for a really corrupt file
TORN_PAUSES = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1)

#: what this process saw: files re-read until they parsed, and files still unreadable after the re-reads
torn_reads = {"recovered": 0, "unreadable": 0}
#: torn reads per legacy document (what the reader named: a path, or an adopted function), the 50 latest
torn_files: dict[str, int] = {}


def note_torn(what: str, *, recovered: bool, error: object = None) -> None:
    """Count (and log) a torn legacy file: seen, then recovered by re-reading or still unreadable."""
    torn_reads["recovered" if recovered else "unreadable"] += 1
    name = str(what)
    torn_files[name] = torn_files.pop(name, 0) + 1  # the latest last
    while len(torn_files) > 50:
        del torn_files[next(iter(torn_files))]
    if recovered:
        log.warning("legacy_file_torn", file=what, outcome="recovered", seen=dict(torn_reads),
                    detail="a writer outside the shim wrote it in place; every writer must run through the shim")
    else:
        log.warning("legacy_file_torn", file=what, outcome="unreadable", error=str(error))
