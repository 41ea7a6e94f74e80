"""The legacy tree listed: every file under the root as the document kind the layout gives its place, or as
not part of the format (unknown) or not readable as one (invalid: a link, FIFO or device, never followed or
opened).  Cheap: nothing is read; the entries are looked at through the gate (:mod:`federation.stores.files`).
"""

from __future__ import annotations

import os
import stat as _stat
from pathlib import Path
from typing import Any, Iterator

from ..domain import layout
from ..domain.layout import FOLDER_DOCUMENTS, LIST_INBOX, MESSAGE_DIRS, MESSAGE_LIST, NODE_FILES, POLLS_FILE, SENT_KEYS_DIR
from ..errors import CorruptFileError
from ..stores import files as _files
from ..stores.files import Tree

__all__ = ["legacy_files", "classify", "INVALID", "UNKNOWN_FILE"]


class _Entry:
    """One entry of a folder listed through the gate (its own lstat: a link is never followed)."""

    __slots__ = ("name", "path", "mode")

    def __init__(self, folder: str, name: str, mode: int):
        self.name, self.path, self.mode = name, os.path.join(folder, name), mode

    def folder(self) -> bool:
        return _stat.S_ISDIR(self.mode)

    def regular(self) -> bool:
        return _stat.S_ISREG(self.mode)


def _entries(directory: Any, root: Path) -> list[_Entry]:
    """The entries of *directory* by name, without dotfiles (temp files of atomic writes); none if it is missing
    (or became a link or a file since it was looked at: nothing is listed through it).  Through the gate:
    the folder is reached from the root without following a link."""
    folder = str(directory)
    try:
        return [_Entry(folder, name, st.st_mode) for name, st in _files.scan_dir(directory, root=root)
                if not name.startswith(".")]
    except (CorruptFileError, NotADirectoryError):
        return []


def legacy_files(tree: Tree) -> Iterator[tuple[str, str, str, str]]:
    """``(kind, path, owner, stem)`` for every file of the legacy tree, cheaply (no reads).

    kind is the document kind, or ``"unknown"`` for a file the legacy format
    does not define (reported, never read); owner is the agent (node files)
    or the file stem (sessions).  Dotfiles (temp files of atomic writes) are
    skipped.
    """
    # Nothing is followed through a link, and only regular files are documents (CONTRACT "Untrusted
    # files"): a link, FIFO, socket or device where the format expects a file or folder is INVALID, with
    # the reason as the owner; elsewhere it is an unknown file like any other.
    root = tree.root
    tops = {}
    for top in (tree.nodes, tree.shared):
        st = _files.lstat(top, root=root)
        tops[top] = st is None or _stat.S_ISDIR(st.st_mode)
        if not tops[top]:  # a link (or a FIFO, a file) where a top folder should be: never entered
            yield INVALID, str(top), _kind(st.st_mode), ""
    for node in _entries(tree.nodes, root) if tops[tree.nodes] else ():
        if not node.folder():
            yield (INVALID, node.path, _odd(node), "") if not node.regular() else \
                ("unknown", node.path, "", "")
            continue
        folders = []  # inbox/, and leased/ and dead/ (messages received and not acknowledged: docs/delivery.md)
        for entry in _entries(node.path, root):
            name = entry.name
            if name in MESSAGE_DIRS and entry.folder():
                folders.append(entry.path)
            elif name == SENT_KEYS_DIR and entry.folder():
                continue  # the index of idempotent sends: bookkeeping, no rows
            elif name in NODE_FILES and entry.regular():
                yield NODE_FILES[name], entry.path, node.name, layout.stem(name)
            elif name == LIST_INBOX and entry.regular():
                yield MESSAGE_LIST, entry.path, node.name, layout.stem(name)  # an adopted list-file inbox
            elif name in NODE_FILES or name in MESSAGE_DIRS or name == SENT_KEYS_DIR or not entry.regular():
                yield INVALID, entry.path, _odd(entry), ""
            else:
                yield "unknown", entry.path, node.name, ""
        for folder in folders:
            for entry in _entries(folder, root):
                name = entry.name
                if entry.regular():
                    kind = "message" if layout.is_document_name(name) else "unknown"
                    yield kind, entry.path, node.name, layout.stem(name)
                else:
                    yield INVALID, entry.path, _odd(entry), ""
    if not tops[tree.shared]:
        return
    for entry in _entries(tree.shared, root):
        if entry.name == POLLS_FILE and entry.regular():
            yield "polls", entry.path, "", "polls"
        elif entry.name in FOLDER_DOCUMENTS and entry.folder():
            for sub in _entries(entry.path, root):
                name = sub.name
                if layout.is_document_name(name) and sub.regular():
                    yield FOLDER_DOCUMENTS[entry.name], sub.path, layout.stem(name), layout.stem(name)
                elif sub.regular():
                    yield "unknown", sub.path, "", ""
                else:
                    yield INVALID, sub.path, _odd(sub), ""
        elif entry.name == POLLS_FILE or entry.name in FOLDER_DOCUMENTS or not entry.regular():
            yield INVALID, entry.path, _odd(entry), ""
        else:
            yield "unknown", entry.path, "", ""


#: the kind :func:`legacy_files` gives an entry that is not followed or not read (its owner is the reason)
INVALID = "invalid"


def _odd(entry: _Entry) -> str:
    """Why a directory entry is not read as a legacy document or folder."""
    return _kind(entry.mode)


def _kind(mode: int) -> str:
    """What an entry of *mode* is, as the gate says it (a link, a folder, a FIFO...); a regular file is listed
    as invalid only where the layout keeps a folder."""
    return "a file where a directory should be" if _stat.S_ISREG(mode) else _files.kind_of(mode)


#: the ``field`` of a ``dropped_fields`` entry for a whole file the legacy format does not define
UNKNOWN_FILE = "(whole file: not part of the legacy format)"



def classify(root: str, path: str) -> tuple[str, str, str, str] | None:
    """``(kind, path, owner, stem)`` of a legacy file under *root*, as :func:`legacy_files` gives it; None if
    not one (string operations: sync classifies every file it re-reads)."""
    if not path.startswith(root):
        return None
    found = layout.classify(path[len(root):].split(os.sep))
    return None if found is None else (found[0], path, found[1], found[2])


