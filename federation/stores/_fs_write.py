"""The gate's writes and removals (:mod:`federation.stores.files`): a file replaced by a temporary file
(O_EXCL) and a rename in its folder's descriptor, appended to with one ``write`` (O_APPEND, one name only),
moved between two held folders, removed (a link as a name, never its target), a folder emptied fd-based.
Only the gate's modules import this one.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
import threading
from pathlib import Path
from typing import Any, Iterable

from ..errors import CorruptFileError, FileStorageError
from ._fs_stamps import stamp_gate_write
from ._fs_walk import _DIR_FLAGS, _kind, _open_dir, folder_of, open_folder


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
            stamp_gate_write(root, dfd, name, path)
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
        stamp_gate_write(root, dfd, name, path)


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
