"""The gate's stamps: which writes of a legacy document the fleet made (private to the gate: callers use
:mod:`federation.stores.files`).

Every process of the fleet writes a legacy document under the document's lock.  After the write it
records, in the lock's own file, a stamp of the file it left: a generation (one more per write), the
document's name and its identity (inode, size, mtime, ctime) (:func:`stamp_written`; the gate's writes
do it themselves while their thread holds a lock).  A reader holding the lock looks at the stamp and the
file (:func:`stamp_look`, a pread and one stat): a file that is not what the fleet's last writer left
was written by a process outside the fleet (:func:`note_outside`); two looks that are equal mean nobody
in the fleet wrote it in between (the generation cannot be fooled) and, most likely, nobody else (an
outside writer that kept inode, size, mtime and ctime within one clock tick is the blind spot; it is
counted by the next look that sees the file changed).
"""

from __future__ import annotations

import contextlib
import os
import struct
import threading
from pathlib import Path

from .._logging import library_logger
from ..domain.layout import Tree
from ..errors import CorruptFileError
from ._fs_walk import HeldFolders, _parts, _walk, path_crc

log = library_logger("federation.files")

#: the locks this thread holds: (root, name) -> (descriptor, tree, name), in the order taken (the gate's
#: writes stamp the last one taken)
held_fds = threading.local()


#: magic, crc32 of the document's path below the root, generation, inode, size, mtime_ns, ctime_ns
_STAMP = struct.Struct("<4sIQQQqq")
_STAMP_MAGIC = b"FST1"


def _identity(st: os.stat_result | None) -> tuple[int, int, int, int] | None:
    return None if st is None else (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _doc_crc(root: Path | str, path: Path | str) -> int:
    """A short name of the document *path* below *root* (the same in every process): the crc32 of its path
    below the root (:func:`~._fs_walk.path_crc`, its folder's part cached with the folder's split)."""
    return path_crc(root, path)


def _held_lock(tree: Tree, name: str) -> tuple[int, Tree, str] | None:
    fds = getattr(held_fds, "fds", None)
    return fds.get((str(tree.root), name)) if fds else None


class Look(tuple):
    """What a reader holding a document's lock saw: (the lock's stamp record, the file's identity, the
    document's crc).  Two equal looks: nobody in the fleet wrote the file between them, and its identity
    is the same."""

    __slots__ = ()

    @property
    def outside(self) -> bool:
        """The file is not what the fleet's last writer of this document left (someone outside wrote it)."""
        record, ident, crc = self
        if ident is None or len(record) != _STAMP.size:
            return False
        magic, doc, _, *stamped = _STAMP.unpack(record)
        return magic == _STAMP_MAGIC and doc == crc and tuple(stamped) != ident

    @property
    def known(self) -> bool:
        """The file exists and the stamp names this document: an equal later look means it is unchanged."""
        record, ident, crc = self
        return ident is not None and len(record) == _STAMP.size and record[:4] == _STAMP_MAGIC \
            and _STAMP.unpack(record)[1] == crc


#: descriptors of the folders of documents whose stamps are looked at (adopted calls): at most 16 held;
#: past that, a look walks from the root as every other access does (see HeldFolders)
_stamp_folders = HeldFolders(16)


class Doc:
    """A legacy document whose stamps are looked at, worked out once (the adopted calls keep one per
    document): its path, its folder and file name, its short name in the stamps and the key of the lock
    it is written under (the lock's name *lock*)."""

    __slots__ = ("root", "path", "folder", "name", "crc", "held_key")

    def __init__(self, tree: Tree, lock: str, path: Path | str):
        self.root = os.fspath(tree.root)
        self.path = path
        self.folder, _, self.name = os.fspath(path).rpartition(os.sep)
        self.crc = _doc_crc(tree.root, path)
        self.held_key = (str(tree.root), lock)  # the key of ``locked``: (str(root), name)


def _ident_of(path: Path, root: Path | str) -> tuple[int, int, int, int] | None:
    """The identity of the document *path* (its stat, no link followed), None when it is missing."""
    folder, _, name = os.fspath(path).rpartition(os.sep)
    return _ident_in(os.fspath(root), folder, name, path)


def _ident_in(root: str, folder: str, name: str, path: Path | str) -> tuple[int, int, int, int] | None:
    """The identity of the file *name* of *folder* (the document *path*): one fstatat in a held descriptor
    of its folder (reached from the root without links, walked to again every second), or a walk when
    too many folders are held."""
    def walk() -> int:
        top, parts = _parts(root, path)
        return _walk(top, parts[:-1], False)

    try:
        dfd, held = _stamp_folders.get((root, folder), walk)
    except FileNotFoundError:  # its folder is missing: so is the document
        return None
    try:
        st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    finally:
        if not held:
            os.close(dfd)
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def stamp_look(tree: Tree, name: str, path: Path | Doc) -> Look | None:
    """This thread's look at the document *path* under the lock *name* it holds (None: not held by it)."""
    doc = path if isinstance(path, Doc) else Doc(tree, name, path)
    fds = getattr(held_fds, "fds", None)
    held = fds.get(doc.held_key) if fds else None
    if held is None:
        return None
    try:
        record = os.pread(held[0], _STAMP.size, 0)
        ident = _ident_in(doc.root, doc.folder, doc.name, doc.path)
    except (OSError, CorruptFileError):
        return None
    return Look((record, ident, doc.crc))


def stamp_written(tree: Tree, name: str, path: Path | Doc, before: Look | None = None) -> Look | None:
    """Record, in the lock *name* this thread holds, that the fleet wrote *path* as it is now; the look
    after it (None: the lock is not held, or the stamp could not be written: the next look says changed).
    *before*: this thread's look under the same hold of the lock (its record is the lock's: not read again)."""
    doc = path if isinstance(path, Doc) else Doc(tree, name, path)
    fds = getattr(held_fds, "fds", None)
    held = fds.get(doc.held_key) if fds else None
    if held is None:
        return None
    try:
        ident = _ident_in(doc.root, doc.folder, doc.name, doc.path)
    except (OSError, CorruptFileError):
        return None
    return _stamp(held, ident, doc.crc, None if before is None else before[0])


def _stamp(held: tuple[int, Tree, str], ident: tuple[int, int, int, int] | None, crc: int,
           old: bytes | None = None) -> Look | None:
    fd, tree, name = held
    try:
        if old is None:
            old = os.pread(fd, _STAMP.size, 0)
        gen = _STAMP.unpack(old)[2] + 1 if len(old) == _STAMP.size and old[:4] == _STAMP_MAGIC else 1
        record = _STAMP.pack(_STAMP_MAGIC, crc, gen, *(ident or (0, 0, 0, 0)))
        os.pwrite(fd, record, 0)  # the held descriptor (read-write; EBADF when the root is read-only)
    except OSError:  # a read-only root: no stamp (nothing is judged against it)
        return None
    return Look((record, ident, crc))


def stamp_gate_write(root: Path | str, dfd: int, name: str, path: Path | str) -> None:
    """A write through the gate by a thread holding a lock below *root*: stamped in the lock it took last
    (the document's own: ``with file_lock(doc): write(doc)``)."""
    fds = getattr(held_fds, "fds", None)
    if not fds:
        return
    top = str(root)
    held = None
    for (r, _), h in fds.items():  # in the order taken: the last one wins
        if r == top:
            held = h
    if held is None:
        return
    try:
        st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
    except OSError:
        return
    _stamp(held, _identity(st), _doc_crc(root, path))


def note_outside(tree: Tree, name: str, path: Path, look: Look) -> None:
    """Count (and log) a document written by a process outside the fleet, once: the file as it is now is
    stamped in its lock (held by this thread), so the same write is not counted again."""
    what = os.path.relpath(path, tree.root)
    outside_writes["seen"] += 1
    outside_files[what] = outside_files.pop(what, 0) + 1  # the latest last
    while len(outside_files) > 50:
        del outside_files[next(iter(outside_files))]
    log.warning("legacy_file_rewritten_outside", file=what, seen=outside_writes["seen"],
                detail="no process of the fleet wrote it as it is now; every writer must run through the shim")
    held = _held_lock(tree, name)
    if held is not None:
        with contextlib.suppress(OSError, CorruptFileError):
            _stamp(held, _ident_of(path, tree.root), look[2])


#: legacy documents this process found rewritten by no process of the fleet (their stamps disagree)
outside_writes = {"seen": 0}
#: such writes per legacy document (its path below the root), the 50 latest
outside_files: dict[str, int] = {}
