"""The gate's reads (:mod:`federation.stores.files`): the bytes of a regular file below the root, never
through a link, never blocking on a FIFO, never more than :data:`MAX_FILE_BYTES`; one at a time, in a
held folder, or a batch through :class:`FolderCache` (one walk per folder).  Only the gate's modules
import this one.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from pathlib import Path
from typing import Any

from ..errors import CorruptFileError
from ._fs_walk import _kind, _parts, _walk, folder_of

#: the largest file read from under the root: anything bigger is invalid, never read into memory
MAX_FILE_BYTES = 64 * 1024 * 1024
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


def read_in(dir_fd: int | None, name: str | Path, shown: object, limit: int = MAX_FILE_BYTES) -> bytes | None:
    """The bytes of the regular file *name* in the folder *dir_fd* (None: *name* is a path); None when
    it is gone."""
    try:
        fd = open_regular(name, dir_fd, shown)
    except FileNotFoundError:
        return None
    try:
        return _read_fd(fd, shown, limit)
    finally:
        os.close(fd)


def _read_fd(fd: int, path: object, limit: int) -> bytes:
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise CorruptFileError(path, _kind(st.st_mode))
    if st.st_size > limit:
        raise CorruptFileError(path, f"is {st.st_size} bytes; files under the root are read up to {limit} bytes")
    parts, size = [], 0
    while True:
        want = max(65536, st.st_size + 1 - size)
        chunk = os.read(fd, want)
        if not chunk:
            return b"".join(parts)
        size += len(chunk)
        if size > limit:  # it grew since fstat
            raise CorruptFileError(path, f"is over {limit} bytes; files under the root are read up to {limit} bytes")
        parts.append(chunk)
        if len(chunk) < want:  # a short read of a regular file is its end: no second read to learn it
            return b"".join(parts)


def open_regular(name: str | Path, dir_fd: int | None = None, shown: object = None) -> int:
    """A read descriptor of a regular file, never through a link and never blocking.

    The entry is looked at first (a device or FIFO is not even opened), then
    opened with O_NOFOLLOW|O_NONBLOCK and checked again on the descriptor.
    """
    shown = name if shown is None else shown
    mode = os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode
    if not stat.S_ISREG(mode):
        raise CorruptFileError(shown, _kind(mode))
    try:
        return os.open(name, _READ_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENXIO, errno.ENOTDIR):  # swapped for a link or a socket meanwhile
            raise CorruptFileError(shown, f"changed into something that is not a regular file ({exc.strerror})") from None
        raise


def read_regular(path: Path | str, *, root: Path | str, limit: int = MAX_FILE_BYTES) -> bytes | None:
    """The bytes of the regular file *path*; None when it does not exist.

    A link, FIFO, socket, device, folder or a file over *limit* bytes raises
    :class:`CorruptFileError` without being followed, opened for reading
    (a FIFO) or read; no folder below *root* is followed either.
    """
    try:
        with folder_of(path, root) as (dfd, name):
            return read_in(dfd, name, path, limit)
    except FileNotFoundError:
        return None


class FolderCache:
    """Descriptors of folders reached below a root without following links, kept for a batch of reads
    (``migrate``/``report`` read every file of a tree: one walk per folder, not one per file).

    A file read through the cache is read relative to its folder's descriptor: a folder swapped for a
    link after it was first reached redirects nothing.  At most *size* descriptors are held; close it
    (or use it as a context manager) when the batch ends.
    """

    def __init__(self, size: int = 128):
        self.size = size
        self.fds: dict[tuple[str, str], int] = {}

    def read(self, path: str, root_of: Any, limit: int = MAX_FILE_BYTES) -> bytes | None:
        """:func:`read_regular` of *path* (a string, as listed) below the root ``root_of(path)`` gives (asked
        only when its folder is not held yet), its folder's descriptor cached."""
        folder, _, name = path.rpartition(os.sep)
        fd = self.fds.get(folder)
        if fd is None:
            top, parts = _parts(root_of(path), path)  # refuses a path outside the root
            if parts[-1] != name or not name or name in (".", ".."):
                raise CorruptFileError(path, "is not a file name below the root (not read)")
            try:
                fd = _walk(top, parts[:-1], False)
            except FileNotFoundError:
                return None
            if len(self.fds) >= self.size:
                os.close(self.fds.pop(next(iter(self.fds))))
            self.fds[folder] = fd
        elif not name or name in (".", ".."):
            raise CorruptFileError(path, "is not a file name below the root (not read)")
        return read_in(fd, name, path, limit)

    def close(self) -> None:
        for fd in self.fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fds.clear()

    def __enter__(self) -> "FolderCache":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_with_stat(path: Path, *, root: Path | str, limit: int = MAX_FILE_BYTES) -> tuple[bytes, os.stat_result] | None:
    """``(bytes, fstat)`` of the regular file *path* below *root* (one descriptor: the bytes and the stat are
    of the same file); None when it is gone.  CorruptFileError for a link, FIFO, folder or oversized file."""
    try:
        with folder_of(path, root) as (dfd, name):
            fd = open_regular(name, dfd, path)
    except FileNotFoundError:
        return None
    try:
        return _read_fd(fd, path, limit), os.fstat(fd)
    finally:
        os.close(fd)
