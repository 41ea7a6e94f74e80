"""The gate to the shared disk, and the low-level helpers of the legacy JSON file tree.

Every file-system operation on a path under the federation root goes through
this module (CONTRACT "One gate to the shared disk"; ``tests/test_gate.py``
keeps every other module off the disk under the root).  Each operation walks
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

import contextlib
import errno
import fcntl
import json
import os
import stat
import struct
import threading
import zlib
import time
from pathlib import Path
from typing import Any, Iterable, Iterator

from .._logging import library_logger

from ..domain import layout as _layout
from ..domain import validate as _validate
from ..domain.layout import Tree  # the paths of the layout; this module reads and writes what is there
from ..errors import CorruptFileError, FileStorageError

__all__ = ["Tree", "atomic_write_json", "read_json", "locked", "read_regular", "list_dir", "check_depth",
           "MAX_FILE_BYTES", "MAX_JSON_DEPTH", "write_bytes", "append_bytes", "remove", "remove_tree", "scan_dir",
           "entry_kind", "is_regular", "folder_of", "open_folder", "rename_at", "flock_file", "walk_tree", "remove_older",
           "lstat", "root_is_folder", "names_in", "read_with_stat",
           "remove_if_unchanged", "remove_folder", "FolderCache",
           "has_legacy_data"]

#: the largest file read from under the root: anything bigger is invalid, never read into memory
MAX_FILE_BYTES = 64 * 1024 * 1024
#: the deepest JSON nesting read from under the root (a message holds 2 levels, a session 4, traits
#: as deep as a caller made them, within ``_validate.MAX_JSON_DEPTH``)
MAX_JSON_DEPTH = 100


_held = threading.local()


def _lock_fd(tree: Tree, name: str) -> int:
    """A descriptor of the lock file *name* (made if missing), opened for the time the lock is held.

    Never cached (issue 30): a process holds one descriptor per lock it holds *now*, whatever the number
    of threads, agents and documents it ever touched (flock is per open file description, so each
    holder opens its own), plus one of each root's ``.locks/`` folder (:func:`_locks_folder`).
    On the path of every locked call: strings and four system calls (open, fstat; flock; close)."""
    fname = name + ".lock"
    try:
        dfd = _locks_folder(tree)
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
            mode = os.fstat(fd).st_mode
            if stat.S_ISREG(mode):
                return fd
            os.close(fd)
    except OSError as exc:  # read-only root, permissions: typed, naming the lock file
        raise FileStorageError.wrap(exc, tree.lock_path(name), "open the lock file") from exc
    what = _kind(mode) if mode else "not a regular file (it changed while opened)"
    raise CorruptFileError(tree.lock_path(name), f"{what}; the lock cannot be taken: remove it")


#: each root's ``.locks/`` folder, reached from the root without following links: (descriptor, device,
#: inode, when last walked to).  Walked to again every LOCKS_RECHECK_S: a folder swapped or moved since is
#: left (its descriptor closed once no lock can be opening in it) and the real one used.
_locks_folders: dict[tuple[int, str], tuple[int, int, int, float]] = {}
_locks_guard = threading.Lock()
LOCKS_RECHECK_S = 1.0


def _locks_folder(tree: Tree) -> int:
    key = (os.getpid(), str(tree.root))  # a forked child walks again: never its parent's descriptor
    found = _locks_folders.get(key)
    now = time.monotonic()
    if found is not None and now - found[3] < LOCKS_RECHECK_S:
        return found[0]
    with _locks_guard:
        found = _locks_folders.get(key)
        if found is not None and now - found[3] < LOCKS_RECHECK_S:
            return found[0]
        top, parts = _parts(tree.root, tree.lock_path("x"))
        fd = _walk(top, parts[:-1], True)
        st = os.fstat(fd)
        if found is not None and (found[1], found[2]) == (st.st_dev, st.st_ino):
            os.close(fd)  # the same folder: keep the descriptor threads may be opening in
            _locks_folders[key] = (found[0], found[1], found[2], now)
            return found[0]
        # a new folder (first use, or the old one was swapped or moved): the old descriptor stays open,
        # counted, until the process ends (a thread may be opening in it right now); one per swap
        _locks_folders[key] = (fd, st.st_dev, st.st_ino, now)
        return fd


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
        fds = getattr(_held, "fds", None)
        if fds is None:
            fds = _held.fds = {}
        fds[self.key] = (fd, self.tree, self.name)  # where this thread's writes leave their stamps

    def __exit__(self, *exc: object) -> None:
        held = _held.locks
        if self.fd is None:
            held[self.key] -= 1
            return
        del held[self.key]
        _held.fds.pop(self.key, None)
        fd, self.fd = self.fd, None
        os.close(fd)  # releases the lock: one descriptor per lock held, never kept


# ---------------------------------------------------------------------------
# Everything under the root is written by every host that mounts it: untrusted
# input (CONTRACT "Untrusted files").  With *root* given, the helpers below walk
# from the root to the file one folder at a time with O_NOFOLLOW, so no symlink
# anywhere below the root is followed, and act on the file through its folder's
# descriptor, so a path can neither leave the root nor be swapped for a link
# between the check and the use.

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


def _parts(root: Path | str, path: Path | str) -> tuple[str, list[str]]:
    """(the root as an absolute path, the components of *path* below it); outside the root is refused.

    String operations, not pathlib: this is on every file access of phase 1; a pure function of two
    absolute paths, so those are cached (a hot document's path is split once, not on every access).
    """
    key = (os.fspath(root), os.fspath(path))
    found = _parts_cache.get(key)
    if found is not None:
        return found[0], list(found[1])
    top, parts = _split_below(root, path)
    if key[0].startswith(os.sep) and key[1].startswith(os.sep):  # relative ones depend on the working folder
        if len(_parts_cache) >= 4096:
            _parts_cache.clear()
        _parts_cache[key] = (top, tuple(parts))
    return top, parts


_parts_cache: dict[tuple[str, str], tuple[str, tuple[str, ...]]] = {}


def _split_below(root: Path | str, path: Path | str) -> tuple[str, list[str]]:
    top = os.path.abspath(root)
    full = os.path.abspath(path)  # also resolves "..": a path that climbs out of the root is refused here
    if not full.startswith(top.rstrip(os.sep) + os.sep):
        raise CorruptFileError(path, f"is outside the federation root {root} (not touched)")
    return top, full[len(top.rstrip(os.sep)) + 1:].split(os.sep)


def kind_of(mode: int) -> str:
    """What an entry of *mode* is, said for a list of invalid files (``a symbolic link (not followed)``...)."""
    return _kind(mode)


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


def atomic_write_json(path: Path, data: Any, *, root: Path | str) -> None:
    """Write *data* as JSON to *path* via a temp file in the same folder + rename.

    Any failure (disk full, read-only, permissions) raises :class:`FileStorageError`
    and leaves *path* as it was and no temp file behind.  The folders below
    *root* are reached without following links (made if missing).
    """
    payload = json.dumps(data, ensure_ascii=False, indent=2).encode("utf-8")
    try:
        with folder_of(path, root, create=True) as (dfd, name):
            _write_in(dfd, name, path, payload)
            _stamp_gate_write(root, dfd, name, path)
    except OSError as exc:
        raise FileStorageError.wrap(exc, path, "write") from exc


def _create_temp(dfd: int, name: str, mode: int = 0o644) -> tuple[int, str]:
    """``(descriptor, name)`` of a new temporary file beside *name* in the folder *dfd*, made with O_EXCL.

    The name is ``.NAME.PID.TID.tmp``: whatever is found there (a crash's leftover, or a hard link or
    link someone planted, the pid being public in ``control/fleet/``) is never opened, truncated or
    followed: its entry is unlinked in the folder (never its target) and the name tried once more, then
    a random name is used.
    """
    tmp = f".{name}.{os.getpid()}.{threading.get_ident()}.tmp"
    for attempt in range(3):
        try:
            return os.open(tmp, _TEMP_FLAGS, mode, dir_fd=dfd), tmp
        except FileExistsError:
            if attempt == 0:
                with contextlib.suppress(OSError):  # a folder there stays: the next name is random
                    os.unlink(tmp, dir_fd=dfd)
            else:
                tmp = f".{name}.{os.getpid()}.{threading.get_ident()}.{os.urandom(4).hex()}.tmp"
    return os.open(tmp, _TEMP_FLAGS, mode, dir_fd=dfd), tmp


_TEMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def _write_in(dfd: int, name: str, path: Path, payload: bytes, durable: bool = False, mode: int | None = None) -> None:
    fd, tmp = _create_temp(dfd, name, 0o644 if mode is None else mode)
    try:
        if mode is not None:
            os.fchmod(fd, mode)  # whatever the umask
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)  # ENOSPC may surface here or at close
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)  # a link at *name* is replaced, never followed
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dfd)
        raise
    if durable:
        with contextlib.suppress(OSError):  # not every filesystem lets a folder be fsynced
            os.fsync(dfd)


def write_bytes(path: Path, payload: bytes, *, root: Path | str, durable: bool = False,
                mode: int | None = None) -> None:
    """Replace the file *path* below *root* with *payload*: a temp file (O_EXCL) in the same folder + rename,
    the folders reached without following links (made if missing).

    durable: fsync the file before the rename and the folder after it; mode: the file's mode whatever the
    umask (default 0644 less the umask).  A link at *path* is replaced,
    never written through.  OSError as the OS raised it; CorruptFileError when a folder is a link or a file.
    """
    with folder_of(path, root, create=True) as (dfd, name):
        _write_in(dfd, name, path, payload, durable, mode)
        _stamp_gate_write(root, dfd, name, path)


# ---------------------------------------------------------------------------
# stamps: which writes of a legacy document the fleet made
#
# Every process of the fleet writes a legacy document under the document's lock.  After the write it
# records, in the lock's own file, a stamp of the file it left: a generation (one more per write), the
# document's name and its identity (inode, size, mtime, ctime) (:func:`stamp_written`; the gate's writes
# do it themselves while their thread holds a lock).  A reader holding the lock looks at the stamp and the
# file (:func:`stamp_look`, a pread and one stat): a file that is not what the fleet's last writer left
# was written by a process outside the fleet (:func:`note_outside`); two looks that are equal mean nobody
# in the fleet wrote it in between (the generation cannot be fooled) and, most likely, nobody else (an
# outside writer that kept inode, size, mtime and ctime within one clock tick is the blind spot; it is
# counted by the next look that sees the file changed).

#: magic, crc32 of the document's path below the root, generation, inode, size, mtime_ns, ctime_ns
_STAMP = struct.Struct("<4sIQQQqq")
_STAMP_MAGIC = b"FST1"


def _identity(st: os.stat_result | None) -> tuple[int, int, int, int] | None:
    return None if st is None else (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


_crcs: dict[tuple[str, str], int] = {}


def _doc_crc(root: Path | str, path: Path | str) -> int:
    """A short name of the document *path* below *root* (the same in every process), cached."""
    key = (os.fspath(root), os.fspath(path))
    crc = _crcs.get(key)
    if crc is None:
        if len(_crcs) >= 4096:
            _crcs.clear()
        crc = _crcs[key] = zlib.crc32(os.path.relpath(path, root).encode("utf-8", "surrogateescape"))
    return crc


def _held_lock(tree: Tree, name: str) -> tuple[int, Tree, str] | None:
    fds = getattr(_held, "fds", None)
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


#: descriptors of the folders of documents whose stamps are looked at (adopted calls): (pid, root, folder) ->
#: (descriptor, device, inode, when last walked to); walked to again every LOCKS_RECHECK_S, as ``.locks/``.
#: At most _STAMP_FOLDERS_MAX are kept (never closed while the process lives: a thread may be using one);
#: past that, a look walks from the root as every other access does.
_stamp_folders: dict[tuple[int, str, str], tuple[int, int, int, float]] = {}
_STAMP_FOLDERS_MAX = 16


def _ident_of(path: Path, root: Path | str) -> tuple[int, int, int, int] | None:
    """The identity of the document *path* (its stat, no link followed), None when it is missing: one
    fstatat in a held descriptor of its folder (reached from the root without links, walked to again
    every second), or a walk when too many folders are held."""
    folder, _, name = os.fspath(path).rpartition(os.sep)
    key = (os.getpid(), os.fspath(root), folder)
    now = time.monotonic()
    found = _stamp_folders.get(key)
    if found is None or now - found[3] >= LOCKS_RECHECK_S:
        with _locks_guard:
            found = _stamp_folders.get(key)
            if found is None or now - found[3] >= LOCKS_RECHECK_S:
                if found is None and len(_stamp_folders) >= _STAMP_FOLDERS_MAX:
                    return _identity(lstat(path, root=root))
                top, parts = _parts(root, path)
                try:
                    fd = _walk(top, parts[:-1], False)
                except FileNotFoundError:
                    return None
                st = os.fstat(fd)
                if found is not None and (found[1], found[2]) == (st.st_dev, st.st_ino):
                    os.close(fd)
                    fd = found[0]
                found = _stamp_folders[key] = (fd, st.st_dev, st.st_ino, now)
    try:
        return _identity(os.stat(name, dir_fd=found[0], follow_symlinks=False))
    except FileNotFoundError:
        return None


def stamp_look(tree: Tree, name: str, path: Path) -> Look | None:
    """This thread's look at the document *path* under the lock *name* it holds (None: not held by it)."""
    held = _held_lock(tree, name)
    if held is None:
        return None
    try:
        record = os.pread(held[0], _STAMP.size, 0)
        ident = _ident_of(path, tree.root)
    except (OSError, CorruptFileError):
        return None
    return Look((record, ident, _doc_crc(tree.root, path)))


def stamp_written(tree: Tree, name: str, path: Path, before: Look | None = None) -> Look | None:
    """Record, in the lock *name* this thread holds, that the fleet wrote *path* as it is now; the look
    after it (None: the lock is not held, or the stamp could not be written: the next look says changed).
    *before*: this thread's look under the same hold of the lock (its record is the lock's: not read again)."""
    held = _held_lock(tree, name)
    if held is None:
        return None
    try:
        ident = _ident_of(path, tree.root)
    except (OSError, CorruptFileError):
        return None
    return _stamp(held, ident, _doc_crc(tree.root, path), None if before is None else before[0])


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


def _stamp_gate_write(root: Path | str, dfd: int, name: str, path: Path | str) -> None:
    """A write through the gate by a thread holding a lock below *root*: stamped in the lock it took last
    (the document's own: ``with file_lock(doc): write(doc)``)."""
    fds = getattr(_held, "fds", None)
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


_APPEND_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


def append_bytes(path: Path, payload: bytes, *, root: Path | str, durable: bool = False) -> None:
    """Append *payload* to the regular file *path* below *root* with one ``write`` on an O_APPEND descriptor
    (made if missing, folders too).

    Never through a link (O_NOFOLLOW, folders included), never to a FIFO, device or folder (looked at
    first, then fstat on the descriptor), and never to a file with more than one hard link (a name
    planted for a file elsewhere): :class:`CorruptFileError`, nothing written.
    """
    with folder_of(path, root, create=True) as (dfd, name):
        fd = _open_made(dfd, name, path, _APPEND_FLAGS, "nothing appended")
    try:
        _check_own(fd, path, "nothing appended")
        os.write(fd, payload)
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)


def _open_made(dfd: int, name: str, path: object, flags: int, refused: str) -> int:
    """``os.open(name, flags)`` in the folder *dfd* (flags with O_CREAT|O_NOFOLLOW|O_NONBLOCK: made if missing,
    never through a link, never blocking), after looking at the entry: a FIFO, device or folder is not even
    opened.  :class:`CorruptFileError` saying *refused* otherwise; the caller checks the descriptor (fstat)."""
    try:
        mode = os.stat(name, dir_fd=dfd, follow_symlinks=False).st_mode
    except FileNotFoundError:
        mode = None
    if mode is not None and not stat.S_ISREG(mode):
        raise CorruptFileError(path, f"{_kind(mode)}; {refused}: remove it")
    try:
        return os.open(name, flags, 0o644, dir_fd=dfd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENXIO, errno.EISDIR):  # swapped for a link or the like meanwhile
            raise CorruptFileError(path, f"changed into something that is not a regular file ({exc.strerror}); "
                                         f"{refused}") from None
        raise


def _check_own(fd: int, path: object, doing: str) -> None:
    """CorruptFileError unless *fd* is a regular file with one name (a hard link's other name may be outside)."""
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise CorruptFileError(path, _kind(st.st_mode) + f"; {doing}")
    if st.st_nlink > 1:
        raise CorruptFileError(path, f"has {st.st_nlink} hard links (another name may be outside the root); {doing}")


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


def rename_at(src_fd: int, dst_fd: int, name: str, shown: object = None) -> bool:
    """Move the regular file *name* from the held folder *src_fd* to the held folder *dst_fd* (same name).

    Both folders are descriptors the caller reached through the gate: a folder swapped for a link after
    they were opened changes nothing here.  False when *name* is gone; CorruptFileError (nothing moved)
    when it is not a regular file.
    """
    try:
        mode = os.stat(name, dir_fd=src_fd, follow_symlinks=False).st_mode
    except FileNotFoundError:
        return False
    if not stat.S_ISREG(mode):
        raise CorruptFileError(shown if shown is not None else name, _kind(mode) + " (not moved)")
    try:
        os.rename(name, name, src_dir_fd=src_fd, dst_dir_fd=dst_fd)
    except FileNotFoundError:
        return False
    return True


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


def remove_if_unchanged(path: Path, *, root: Path | str, seen: os.stat_result) -> bool | None:
    """Remove the regular file *path* below *root* if it is still the file *seen* (same inode, size and
    modification time), relative to its folder's descriptor.  True: removed; False: changed (kept);
    None: gone.  A link or anything else at *path* is never removed through: CorruptFileError."""
    try:
        with folder_of(path, root) as (dfd, name):
            st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
            if not stat.S_ISREG(st.st_mode):
                raise CorruptFileError(path, _kind(st.st_mode) + " (not removed)")
            if (st.st_ino, st.st_size, st.st_mtime_ns) != (seen.st_ino, seen.st_size, seen.st_mtime_ns):
                return False
            os.unlink(name, dir_fd=dfd)
            return True
    except FileNotFoundError:
        return None


def remove_folder(path: Path, *, root: Path | str) -> bool:
    """Remove the empty real folder *path* below *root* (a link there is not removed: rmdir refuses it);
    False when it is missing, not empty, or not a folder."""
    try:
        with folder_of(path, root) as (dfd, name):
            os.rmdir(name, dir_fd=dfd)
        return True
    except (OSError, CorruptFileError):
        return False


def remove_older(path: Path, *, root: Path | str, before: float, keep: Iterable[str] = ()) -> int:
    """Remove the regular files of folder *path* below *root* last modified before *before* (epoch seconds),
    but those named in *keep*; relative to the folder's descriptor (reached without links), so a folder
    swapped for a link meanwhile changes nothing.  Links, FIFOs and folders in it stay.  Returns how many
    were removed; 0 when the folder is missing.
    """
    keep = set(keep)
    removed = 0
    with open_folder(path, root) as fd:
        if fd is None:
            return 0
        for name in os.listdir(fd):
            if name in keep:
                continue
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                if stat.S_ISREG(st.st_mode) and st.st_mtime < before:
                    os.unlink(name, dir_fd=fd)
                    removed += 1
            except OSError:
                continue
    return removed


def remove_tree(path: Path, *, root: Path | str, max_depth: int = 64) -> bool:
    """Remove the folder *path* below *root* and everything in it, fd-based (like ``shutil.rmtree``'s
    fd walk): every folder is opened with O_NOFOLLOW relative to its parent's descriptor, so a link
    anywhere inside is removed as a name, never followed.  False when *path* is missing;
    CorruptFileError when *path* itself (or a folder above it) is a link or a file: nothing removed.
    """
    try:
        with folder_of(path, root) as (pfd, name):
            fd = _open_dir(name, pfd, path, False)
            try:
                _clear(fd, path, max_depth)
            finally:
                os.close(fd)
            os.rmdir(name, dir_fd=pfd)
    except FileNotFoundError:
        return False
    return True


def _clear(fd: int, shown: object, depth: int) -> None:
    if depth <= 0:
        raise CorruptFileError(shown, "is nested too deeply to be removed")
    for name in os.listdir(fd):
        try:
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            continue
        if stat.S_ISDIR(st.st_mode):
            try:
                sub = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except OSError:  # swapped for a link or a file meanwhile: not followed
                continue
            try:
                if os.path.samestat(st, os.fstat(sub)):
                    _clear(sub, shown, depth - 1)
            finally:
                os.close(sub)
            with contextlib.suppress(OSError):
                os.rmdir(name, dir_fd=fd)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name, dir_fd=fd)  # a link is removed as a name, never its target


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


def remove(path: Path, *, root: Path | str) -> bool:
    """Remove the file *path* below *root*, relative to its folder's descriptor (reached without links; a
    link is removed, never its target); False when it is not there, or is a folder."""
    try:
        with folder_of(path, root) as (dfd, name):
            try:
                os.unlink(name, dir_fd=dfd)
            except OSError as exc:
                if exc.errno in (errno.EISDIR, errno.EPERM) and \
                        stat.S_ISDIR(os.stat(name, dir_fd=dfd, follow_symlinks=False).st_mode):
                    return False
                raise
        return True
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise FileStorageError.wrap(exc, path, "remove") from exc


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
