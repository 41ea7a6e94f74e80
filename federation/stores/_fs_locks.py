"""The gate's locks (:mod:`federation.stores.files`): the advisory locks of the federation's documents
(``.locks/{name}.lock``, :class:`locked`, re-entrant per thread) and a lock on a file of the caller's
choosing (:func:`flock_file`), their files opened without following a link and never blocking on a FIFO.
Only the gate's modules import this one.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import threading
from pathlib import Path
from typing import Iterator

from ..domain.layout import Tree
from ..errors import CorruptFileError, FileStorageError
from ._fs_stamps import held_fds
from ._fs_walk import HeldFolders, _kind, _parts, _walk, folder_of
from ._fs_write import _open_made

_held = threading.local()


def _lock_fd(tree: Tree, name: str) -> int:
    """A descriptor of the lock file *name* (made if missing), opened for the time the lock is held.

    Never cached (issue 30): a process holds one descriptor per lock it holds *now*, whatever the number
    of threads, agents and documents it ever touched (flock is per open file description, so each
    holder opens its own), plus the ``.locks/`` folders it holds (:func:`_locks_folder`, at most 64).
    On the path of every locked call: strings and four system calls (open, fstat; flock; close)."""
    try:
        dfd, held = _locks_folder(tree)
    except OSError as exc:  # read-only root, permissions: typed, naming the lock file
        raise FileStorageError.wrap(exc, tree.lock_path(name), "open the lock file") from exc
    try:
        return _open_lock_in(dfd, tree, name)
    finally:
        if not held:
            os.close(dfd)


def _open_lock_in(dfd: int, tree: Tree, name: str) -> int:
    fname = name + ".lock"
    try:
        try:  # O_NOFOLLOW|O_NONBLOCK: never through a link, never blocking on a FIFO; fstat decides
            try:  # read-write while held: the fleet's stamp of the document is written in it (a read-only
                # root or lock file: read-only, as flock needs no more; no stamp is written then)
                fd = os.open(fname, _LOCK_RW_FLAGS, 0o644, dir_fd=dfd)
            except OSError as exc:
                if exc.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
                    raise
                fd = os.open(fname, _LOCK_FLAGS, 0o644, dir_fd=dfd)
        except OSError as exc:
            if exc.errno not in (errno.ELOOP, errno.ENXIO, errno.EISDIR):
                raise
            mode = 0
            with contextlib.suppress(OSError):
                mode = os.stat(fname, dir_fd=dfd, follow_symlinks=False).st_mode
        else:
            st = os.fstat(fd)
            mode = st.st_mode
            if stat.S_ISREG(mode) and st.st_nlink > 1:
                # another name of this file may be outside the root: locked, never written (no stamp)
                os.close(fd)
                fd = os.open(fname, _LOCK_FLAGS, 0o644, dir_fd=dfd)
                st = os.fstat(fd)
                mode = st.st_mode
            if stat.S_ISREG(mode):
                return fd
            os.close(fd)
    except OSError as exc:  # read-only root, permissions: typed, naming the lock file
        raise FileStorageError.wrap(exc, tree.lock_path(name), "open the lock file") from exc
    what = _kind(mode) if mode else "not a regular file (it changed while opened)"
    raise CorruptFileError(tree.lock_path(name), f"{what}; the lock cannot be taken: remove it")


#: each root's ``.locks/`` folder, reached from the root without following links (at most 64 roots held)
_locks_folders = HeldFolders(64)


def _locks_folder(tree: Tree) -> tuple[int, bool]:
    """A descriptor of the root's ``.locks/`` folder (made if missing), and whether it is held (else the
    caller closes it)."""
    def walk() -> int:
        top, parts = _parts(tree.root, tree.lock_path("x"))
        return _walk(top, parts[:-1], True)

    return _locks_folders.get(str(tree.root), walk)


_LOCK_FLAGS = os.O_RDONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_LOCK_RW_FLAGS = _LOCK_FLAGS & ~os.O_RDONLY | os.O_RDWR


def _open_lock(path: Path, root: Path | str) -> int:
    """A read descriptor of the lock file *path*, made if missing, reached below *root* without links.

    Read-only: flock needs no write access, and a descriptor open for writing would stop the
    filesystem from being remounted read-only.  A link (dangling or not) is never followed and never
    creates its target (O_CREAT|O_NOFOLLOW in the folder's descriptor); a FIFO, device or folder is not
    opened (looked at first) and never blocks (O_NONBLOCK, then fstat): :class:`CorruptFileError`.
    """
    with folder_of(path, root, create=True) as (dfd, name):
        fd = _open_made(dfd, name, path, _LOCK_FLAGS, "the lock cannot be taken")
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise CorruptFileError(path, _kind(st.st_mode) + "; the lock cannot be taken: remove it")
    return fd


@contextlib.contextmanager
def flock_file(path: Path, root: Path | str, *, wait: bool = True) -> Iterator[bool]:
    """An exclusive advisory lock on the file *path* below *root* (made if missing), for the ``with`` block.

    Opened through the gate (no link followed, never blocking on a FIFO); closing releases it.  Yields
    True when held; with *wait* False, False at once when another holder has it (nothing held then).
    """
    try:
        fd = _open_lock(path, root)
    except OSError as exc:
        raise FileStorageError.wrap(exc, path, "open the lock file") from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


class locked:
    """An exclusive advisory lock (flock) named *name* under the root.

    Re-entrant within a thread: a function that holds ``polls`` may call
    another that takes ``polls`` again.  Different threads and processes
    exclude each other (each thread locks its own descriptor).  A class, not
    a generator: it is on every dual-phase call.
    """

    __slots__ = ("tree", "name", "key", "fd")

    def __init__(self, tree: Tree, name: str):
        self.tree, self.name, self.key, self.fd = tree, name, (str(tree.root), name), None

    def __enter__(self) -> None:
        held = getattr(_held, "locks", None)
        if held is None:
            held = _held.locks = {}
        if self.key in held:
            held[self.key] += 1
            return
        fd = _lock_fd(self.tree, self.name)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(fd)
            raise
        held[self.key] = 1
        self.fd = fd
        fds = getattr(held_fds, "fds", None)
        if fds is None:
            fds = held_fds.fds = {}
        fds[self.key] = (fd, self.tree, self.name)  # where this thread's writes leave their stamps

    def __exit__(self, *exc: object) -> None:
        held = _held.locks
        if self.fd is None:
            held[self.key] -= 1
            return
        del held[self.key]
        held_fds.fds.pop(self.key, None)
        fd, self.fd = self.fd, None
        os.close(fd)  # releases the lock: one descriptor per lock held, never kept
