"""The gate's walk (:mod:`federation.stores.files`): a folder reached from the root one component at a time
without following a link, and what is in it looked at (listed, ``lstat``) without following one either.

Everything under the root is written by every host that mounts it: untrusted input (CONTRACT "Untrusted
files").  With *root* given, the helpers of the gate walk from the root to the file one folder at a time
with O_NOFOLLOW, so no symlink anywhere below the root is followed, and act on the file through its
folder's descriptor, so a path can neither leave the root nor be swapped for a link between the check
and the use.  Only the gate's modules import this one.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import threading
import time
import zlib
from pathlib import Path
from typing import Callable, Hashable, Iterator

from ..errors import CorruptFileError

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
#: a folder's descriptor kept open (``.locks/``, a stamped document's folder) is walked to again this often
LOCKS_RECHECK_S = 1.0


def _parts(root: Path | str, path: Path | str) -> tuple[str, list[str]]:
    """(the root as an absolute path, the components of *path* below it); outside the root is refused.

    String operations, not pathlib: this is on every file access of phase 1; a pure function of two
    absolute paths, so the split of a path's *folder* is cached (a hot folder is split once, not on every
    access) and its file name appended.  Keyed by folder, the cache holds what a process's folders are
    (a few per agent), not one entry per message file: it no longer fills and empties every few minutes
    under traffic, which churned the allocator (issue 30: the stdio servers' memory).
    """
    found, name = _folder_of(root, path)
    if found is None:
        return _split_below(root, path)
    parts = list(found[1])
    parts.append(name)
    return found[0], parts


def path_crc(root: Path | str, path: Path | str) -> int:
    """The crc32 of *path* below *root* (``a/b.json``; the stamps' short name of a document), its folder's
    part taken from the same cache as :func:`_parts` and continued over the file name."""
    found, name = _folder_of(root, path)
    if found is None:
        return zlib.crc32(os.sep.join(_split_below(root, path)[1]).encode("utf-8", "surrogateescape"))
    return zlib.crc32(name.encode("utf-8", "surrogateescape"), found[2])


def _folder_of(root: Path | str, path: Path | str) -> tuple[tuple[str, tuple[str, ...], int] | None, str]:
    """((the root as an absolute path, the folder's components below it, crc32 of ``folder/``), the file
    name) from the cache, the folder split on first use; None when the path is split whole instead
    (relative, the root itself, a name that moves, refused)."""
    root_s, path_s = os.fspath(root), os.fspath(path)
    folder, sep, name = path_s.rpartition(os.sep)
    if not sep or not folder or name in ("", ".", "..") or not root_s.startswith(os.sep) \
            or not folder.startswith(os.sep):
        return None, name
    key = (root_s, folder)
    found = _parts_cache.get(key)
    if found is None:
        try:
            top, above = _split_below(root_s, folder + os.sep + "_")  # the folder's components, via a child
        except CorruptFileError:
            return None, name  # refused, in the words of the path asked for
        below = tuple(above[:-1])
        crc = zlib.crc32((os.sep.join(below) + os.sep).encode("utf-8", "surrogateescape")) if below else 0
        found = (top, below, crc)
        if len(_parts_cache) >= _PARTS_CACHE_MAX:
            _parts_cache.pop(next(iter(_parts_cache)))  # the oldest: one at a time, never all at once
        _parts_cache[key] = found
    return found, name


#: folders whose split is kept: a process's folders are a few per agent and entity
_PARTS_CACHE_MAX = 1024
_parts_cache: dict[tuple[str, str], tuple[str, tuple[str, ...], int]] = {}


def _split_below(root: Path | str, path: Path | str) -> tuple[str, list[str]]:
    top = os.path.abspath(root)
    full = os.path.abspath(path)  # also resolves "..": a path that climbs out of the root is refused here
    if not full.startswith(top.rstrip(os.sep) + os.sep):
        raise CorruptFileError(path, f"is outside the federation root {root} (not touched)")
    return top, full[len(top.rstrip(os.sep)) + 1:].split(os.sep)


def kind_of(mode: int) -> str:
    """What an entry of *mode* is, said for a list of invalid files (``a symbolic link (not followed)``...)."""
    return _kind(mode)


#: a held folder descriptor let go (its folder swapped, or unused and its room needed) is closed this long
#: after: a thread that took it may be opening in it right now, for microseconds, never for a minute
RETIRE_AFTER_S = 60.0


class HeldFolders:
    """Descriptors of folders reached from a root without links, kept open for the calls that open in them
    (``.locks/``, a stamped document's folder): at most *limit*, whatever the number of roots and folders a
    process ever used (one per root, kept for the process's life, filled a test run's 1,024 descriptors).

    :meth:`get` walks to a folder again every :data:`LOCKS_RECHECK_S`; a folder swapped since is let go and
    the real one held.  When all *limit* are taken, one not walked to for :data:`RETIRE_AFTER_S` makes room,
    else the folder is not held (the caller gets a descriptor of its own to close).  A descriptor let go is
    closed :data:`RETIRE_AFTER_S` later.  A forked child closes its copies and starts with none.
    """

    def __init__(self, limit: int):
        self.limit = limit
        self._held: dict[Hashable, tuple[int, int, int, float]] = {}  # key -> (fd, device, inode, walked at)
        self._retired: list[tuple[int, float]] = []  # (fd, let go at)
        self._guard = threading.Lock()
        os.register_at_fork(after_in_child=self._forked)

    def get(self, key: Hashable, walk: Callable[[], int]) -> tuple[int, bool]:
        """(descriptor of the folder *key*, whether it is held): a descriptor not held is the caller's to
        close.  *walk* opens the folder (its errors are the caller's)."""
        now = time.monotonic()
        found = self._held.get(key)
        if found is not None and now - found[3] < LOCKS_RECHECK_S:
            return found[0], True
        with self._guard:
            found = self._held.get(key)
            if found is not None and now - found[3] < LOCKS_RECHECK_S:
                return found[0], True
            self._close_retired(now)
            fd = walk()
            st = os.fstat(fd)
            if found is not None:
                if (found[1], found[2]) == (st.st_dev, st.st_ino):
                    os.close(fd)  # the same folder: keep the descriptor threads may be opening in
                    self._held[key] = (found[0], found[1], found[2], now)
                    return found[0], True
                self._retired.append((found[0], now))  # swapped or moved: the real one from now on
            elif len(self._held) >= self.limit and not self._make_room(now):
                return fd, False
            self._held[key] = (fd, st.st_dev, st.st_ino, now)
            return fd, True

    def _make_room(self, now: float) -> bool:
        stale = min(self._held, key=lambda k: self._held[k][3])
        if now - self._held[stale][3] < RETIRE_AFTER_S:
            return False  # every one in use: no churn of descriptors
        self._retired.append((self._held.pop(stale)[0], now))
        return True

    def _close_retired(self, now: float) -> None:
        while self._retired and now - self._retired[0][1] >= RETIRE_AFTER_S:
            with contextlib.suppress(OSError):
                os.close(self._retired.pop(0)[0])

    def count(self) -> int:
        """Descriptors this process holds here (held and let go, not yet closed)."""
        return len(self._held) + len(self._retired)

    def _forked(self) -> None:
        for fd in [entry[0] for entry in self._held.values()] + [fd for fd, _ in self._retired]:
            with contextlib.suppress(OSError):
                os.close(fd)  # the child's copies: the parent keeps its own
        self._held, self._retired, self._guard = {}, [], threading.Lock()


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symbolic link (not followed)"
    if stat.S_ISDIR(mode):
        return "a directory where a file should be"
    if stat.S_ISFIFO(mode):
        return "a FIFO, not a regular file (not opened)"
    if stat.S_ISSOCK(mode):
        return "a socket, not a regular file (not opened)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device, not a regular file (not opened)"
    return "not a regular file (not opened)"


def _open_dir(name: str, dir_fd: int | None, shown: object, create: bool) -> int:
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        if not create:
            raise
        with contextlib.suppress(FileExistsError):
            os.mkdir(name, 0o755, dir_fd=dir_fd)
        return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):  # a link, or a file where a folder should be
            try:
                mode = os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode
            except OSError:
                mode = 0
            raise CorruptFileError(shown, _kind(mode) if mode else "is not a folder") from None
        raise


def _walk(top: str, parts: list[str], create: bool) -> int:
    """A descriptor of the folder *parts* below the folder *top*, no link followed (the caller closes it)."""
    try:  # the root itself may be a link: the operator chose it
        fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        if not create:
            raise
        os.makedirs(top, exist_ok=True)
        fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for n, part in enumerate(parts):
            nxt = _open_dir(part, fd, os.path.join(top, *parts[:n + 1]), create)
            os.close(fd)
            fd = nxt
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextlib.contextmanager
def folder_of(path: Path | str, root: Path | str, *, create: bool = False) -> Iterator[tuple[int, str]]:
    """``(descriptor of the folder holding path, its file name)``, reached below *root* without following links.

    A missing folder raises FileNotFoundError (or, with *create*, is made).
    """
    top, parts = _parts(root, path)
    fd = _walk(top, parts[:-1], create)
    try:
        yield fd, parts[-1]
    finally:
        os.close(fd)


@contextlib.contextmanager
def open_folder(path: Path | str, root: Path | str, *, create: bool = False) -> Iterator[int | None]:
    """A descriptor of the folder *path* itself below *root* (no link followed); None when it is missing
    (with *create*: made, folders above it too)."""
    top, parts = _parts(root, path)
    try:
        fd = _walk(top, parts, create)
    except FileNotFoundError:
        yield None
        return
    try:
        yield fd
    finally:
        os.close(fd)


def list_dir(path: Path, *, root: Path) -> list[str]:
    """The names in folder *path* below *root*, reached without following links; [] when it is missing."""
    with open_folder(path, root) as fd:
        return [] if fd is None else os.listdir(fd)


def lstat(path: Path, *, root: Path | str) -> os.stat_result | None:
    """The stat of *path* itself (a link is not followed), reached below *root* without following links;
    None when it is missing.  CorruptFileError when a folder above it is a link or a file."""
    try:
        with folder_of(path, root) as (dfd, name):
            return os.stat(name, dir_fd=dfd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def root_is_folder(root: Path | str) -> bool:
    """Whether the root itself is a folder (the operator's choice: a link to one is followed)."""
    return os.path.isdir(root)


def names_in(dir_fd: int) -> list[str]:
    """The names in the folder held as *dir_fd* (a descriptor from :func:`open_folder`)."""
    return os.listdir(dir_fd)


def entry_kind(path: Path, *, root: Path) -> int | None:
    """The ``st_mode`` of *path* itself (a link is not followed), reached below *root*; None when missing."""
    try:
        with folder_of(path, root) as (dfd, name):
            return os.stat(name, dir_fd=dfd, follow_symlinks=False).st_mode
    except (FileNotFoundError, CorruptFileError):
        return None


def scan_dir(path: Path, *, root: Path | str) -> list[tuple[str, os.stat_result]]:
    """``[(name, lstat)]`` of the entries of folder *path* below *root* (reached without links; each entry
    looked at itself, a link not followed), by name; [] when the folder is missing.  An entry removed
    between the listing and its stat is left out."""
    out = []
    with open_folder(path, root) as fd:
        if fd is None:
            return []
        for name in sorted(os.listdir(fd)):
            try:
                out.append((name, os.stat(name, dir_fd=fd, follow_symlinks=False)))
            except FileNotFoundError:
                continue
    return out


def is_regular(path: Path, *, root: Path | str) -> bool:
    """Whether *path* below *root* is a regular file (reached without following links; a link is not one)."""
    mode = entry_kind(path, root=root)
    return mode is not None and stat.S_ISREG(mode)


class Entry:
    """One entry of :func:`walk_tree`: its path, the descriptor of its folder (valid during the walk) and lstat."""

    __slots__ = ("path", "rel", "dir_fd", "name", "stat")

    def __init__(self, path: Path, rel: str, dir_fd: int, name: str, st: os.stat_result):
        self.path, self.rel, self.dir_fd, self.name, self.stat = path, rel, dir_fd, name, st


def walk_tree(path: Path, *, root: Path | str, max_depth: int = 64) -> Iterator[Entry]:
    """Every entry under the folder *path* below *root*, folders first (pre-order, names sorted), each
    with the descriptor of the folder holding it (opened without following links); a link or other
    non-folder is yielded and not entered.  Nothing when *path* is missing; CorruptFileError when
    *path* or a folder above it is a link or a file.
    """
    with open_folder(path, root) as fd:
        if fd is None:
            return
        rel = os.path.relpath(path, root)
        yield from _walk_fd(fd, Path(path), rel, max_depth)


def _walk_fd(fd: int, here: Path, rel: str, depth: int) -> Iterator[Entry]:
    if depth <= 0:
        raise CorruptFileError(here, "is nested too deeply")
    for name in sorted(os.listdir(fd)):
        try:
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            continue
        entry = Entry(here / name, f"{rel}/{name}", fd, name, st)
        yield entry
        if stat.S_ISDIR(st.st_mode):
            try:
                sub = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except OSError:
                continue
            try:
                if os.path.samestat(st, os.fstat(sub)):
                    yield from _walk_fd(sub, here / name, entry.rel, depth - 1)
            finally:
                os.close(sub)
