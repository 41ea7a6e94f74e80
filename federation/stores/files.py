"""Low-level helpers for the legacy JSON file tree.

What the legacy path should always have done: agent names validated before
they touch a path, every write through a temp file + rename (a reader never
sees a torn file), and an advisory lock around every read-modify-write.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import stat
import threading
import time
import weakref
from pathlib import Path
from typing import Any, Iterator

from .._logging import library_logger

from ..domain import validate as _validate
from ..domain.layout import Tree  # the paths of the layout; this module reads and writes what is there
from ..errors import CorruptFileError, FileStorageError

__all__ = ["Tree", "atomic_write_json", "read_json", "locked", "read_regular", "list_dir", "check_depth",
           "MAX_FILE_BYTES", "MAX_JSON_DEPTH"]

#: the largest file read from under the root: anything bigger is invalid, never read into memory
MAX_FILE_BYTES = 64 * 1024 * 1024
#: the deepest JSON nesting read from under the root (a message holds 2 levels, a session 4, traits
#: as deep as a caller made them, within ``_validate.MAX_JSON_DEPTH``)
MAX_JSON_DEPTH = 100


_held = threading.local()
_MAX_CACHED_FDS = 256


class _ThreadEnd:
    """Lives exactly as long as one thread's lock descriptors: its finalizer closes them."""

    __slots__ = ("__weakref__",)


def _close_fds(fds: dict, pid: int) -> None:
    if pid == os.getpid():  # never a forked parent's descriptors
        for fd in fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        fds.clear()


def _thread_fds() -> dict[tuple[str, str], int]:
    """This thread's lock descriptors by (root, name): kept for the thread's life (flock is per
    descriptor), closed when the thread ends (a server's worker threads come and go)."""
    fds = getattr(_held, "fds", None)
    if fds is None or _held.pid != os.getpid():  # a forked child: the parent's descriptors are not ours
        fds = _held.fds = {}
        _held.pid = os.getpid()
        _held.end = _ThreadEnd()
        weakref.finalize(_held.end, _close_fds, fds, os.getpid())
    return fds


def _lock_fd(tree: Tree, name: str, held: dict) -> int:
    """An open descriptor of the lock file, cached per process and thread (flock is per descriptor)."""
    key = (str(tree.root), name)
    fds = _thread_fds()
    fd = fds.get(key)
    if fd is not None:
        return fd
    path = tree.lock_path(name)
    # read-only: flock needs no write access, and a descriptor open for writing
    # would stop the filesystem from being remounted read-only
    try:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except FileNotFoundError:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:  # read-only root, permissions: typed, naming the lock file
        raise FileStorageError.wrap(exc, path, "open the lock file") from exc
    if len(fds) > _MAX_CACHED_FDS:
        for k in [k for k in fds if k not in held]:
            os.close(fds.pop(k))
    fds[key] = fd
    return fd


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
        fd = _lock_fd(self.tree, self.name, held)
        fcntl.flock(fd, fcntl.LOCK_EX)
        held[self.key] = 1
        self.fd = fd

    def __exit__(self, *exc: object) -> None:
        held = _held.locks
        if self.fd is None:
            held[self.key] -= 1
            return
        del held[self.key]
        fcntl.flock(self.fd, fcntl.LOCK_UN)


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

    String operations, not pathlib: this is on every file access of phase 1.
    """
    top = os.path.abspath(root)
    full = os.path.abspath(path)  # also resolves "..": a path that climbs out of the root is refused here
    if not full.startswith(top.rstrip(os.sep) + os.sep):
        raise CorruptFileError(path, f"is outside the federation root {root} (not touched)")
    return top, full[len(top.rstrip(os.sep)) + 1:].split(os.sep)


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
def open_folder(path: Path | str, root: Path | str) -> Iterator[int | None]:
    """A descriptor of the folder *path* itself below *root* (no link followed); None when it is missing."""
    top, parts = _parts(root, path)
    try:
        fd = _walk(top, parts, False)
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
        chunk = os.read(fd, max(65536, st.st_size + 1 - size))
        if not chunk:
            return b"".join(parts)
        size += len(chunk)
        if size > limit:  # it grew since fstat
            raise CorruptFileError(path, f"is over {limit} bytes; files under the root are read up to {limit} bytes")
        parts.append(chunk)


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


def read_regular(path: Path | str, *, root: Path | None = None, limit: int = MAX_FILE_BYTES) -> bytes | None:
    """The bytes of the regular file *path*; None when it does not exist.

    A link, FIFO, socket, device, folder or a file over *limit* bytes raises
    :class:`CorruptFileError` without being followed, opened for reading
    (a FIFO) or read.  With *root*, no folder below it is followed either.
    """
    if root is not None:
        try:
            with folder_of(path, root) as (dfd, name):
                return read_in(dfd, name, path, limit)
        except FileNotFoundError:
            return None
    return read_in(None, path, path, limit)


def list_dir(path: Path, *, root: Path) -> list[str]:
    """The names in folder *path* below *root*, reached without following links; [] when it is missing."""
    with open_folder(path, root) as fd:
        return [] if fd is None else os.listdir(fd)


def entry_kind(path: Path, *, root: Path) -> int | None:
    """The ``st_mode`` of *path* itself (a link is not followed), reached below *root*; None when missing."""
    try:
        with folder_of(path, root) as (dfd, name):
            return os.stat(name, dir_fd=dfd, follow_symlinks=False).st_mode
    except (FileNotFoundError, CorruptFileError):
        return None


def atomic_write_json(path: Path, data: Any, *, root: Path | None = None) -> None:
    """Write *data* as JSON to *path* via a temp file in the same folder + rename.

    Any failure (disk full, read-only, permissions) raises :class:`FileStorageError`
    and leaves *path* as it was and no temp file behind.  With *root*, the
    folders below it are reached without following links (made if missing).
    """
    payload = json.dumps(data, ensure_ascii=False, indent=2).encode("utf-8")
    if root is not None:
        try:
            with folder_of(path, root, create=True) as (dfd, name):
                _write_in(dfd, name, path, payload)
        except OSError as exc:
            raise FileStorageError.wrap(exc, path, "write") from exc
        return
    directory = path.parent
    tmp = directory / f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp"
    try:
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        except FileNotFoundError:
            directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    except OSError as exc:
        raise FileStorageError.wrap(exc, path, "write") from exc
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)  # ENOSPC may surface here or at close
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise FileStorageError.wrap(exc, path, "write") from exc
        raise


def _write_in(dfd: int, name: str, path: Path, payload: bytes) -> None:
    tmp = f".{name}.{os.getpid()}.{threading.get_ident()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=dfd)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)  # ENOSPC may surface here or at close
        os.replace(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)  # a link at *name* is replaced, never followed
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dfd)
        raise


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


def read_json(path: Path, expect: type = dict, default: Any = None, *, root: Path | None = None) -> Any:
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


def _read_raw(path: Path, root: Path | None) -> bytes | None:
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


def remove(path: Path, *, root: Path | None = None) -> bool:
    """Remove the file *path* (a link is removed, never its target); False when it is not there."""
    try:
        if root is None:
            os.unlink(path)
        else:
            with folder_of(path, root) as (dfd, name):
                os.unlink(name, dir_fd=dfd)
        return True
    except FileNotFoundError:
        return False
    except OSError as exc:
        if exc.errno in (errno.EISDIR, errno.EPERM) and os.path.isdir(path):
            return False
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
