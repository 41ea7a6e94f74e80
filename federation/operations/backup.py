"""``federation backup``: a verified online copy of a live SQLite database.

The copy is taken with SQLite's online backup API in one step, which reads
one consistent snapshot while agents keep writing (WAL: readers never block
writers, and every transaction committed before the copy began is in it).
It is written to a temp name beside the target, checked with
``PRAGMA integrity_check``, switched to a self-contained single file
(``journal_mode=DELETE``), flushed to disk, and only then given its name —
without ever replacing a file that exists.  A failure leaves no file behind.

PostgreSQL is backed up by its own tool: :func:`pg_dump_command` says how.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import re
import sqlite3
import time
from pathlib import Path
from typing import Any

from .. import config
from ..domain import clock as _clock
from ..stores import schema
from .._logging import library_logger
from ..errors import FederationError, FileStorageError, StorageError, ValidationError

__all__ = ["BackupResult", "backup", "pg_dump_command", "check_target"]

log = library_logger("federation.backup")

#: How long the copy may wait for a database that stays locked (recovery, an exclusive tool).
BUSY_TIMEOUT_S = 30.0


@dataclasses.dataclass
class BackupResult:
    path: str
    source: str
    bytes: int
    integrity: str
    schema_version: int
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _strip_password(url: str) -> str:
    """The URL without any password (user:secret@ or a password= parameter)."""
    url = re.sub(r"(://[^:/@]+):[^@]*@", r"\1@", url)
    url = re.sub(r"([?&])password=[^&]*&?", r"\1", url)
    return url.rstrip("?&")


def pg_dump_command(url: str, dest: str | os.PathLike = "federation-$(date +%F).dump") -> str:
    """The ``pg_dump`` command that backs up the PostgreSQL database of *url* (no password in it)."""
    return f"pg_dump --format=custom --file={_quote(str(dest))} {_quote(_strip_password(url))}"


def _quote(text: str) -> str:
    if "$(" in text:  # keep a shell substitution working: double quotes
        return f'"{text}"'
    import shlex

    return shlex.quote(text)


def check_target(dest: Path) -> Path:
    """*dest* as an absolute path; :class:`ValidationError` when it exists or its folder does not."""
    dest = Path(dest).expanduser().absolute()
    if dest.exists() or dest.is_symlink():
        raise ValidationError(f"{dest} already exists: a backup never overwrites a file; choose a new name")
    if not dest.parent.is_dir():
        raise ValidationError(f"the folder {dest.parent} does not exist: create it first (mkdir -p {dest.parent})")
    return dest


def _cleanup(tmp: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{tmp}{suffix}")


def backup(dest: str | os.PathLike, settings: config.Settings) -> BackupResult:
    """Copy the SQLite database of *settings* to *dest*, verified; raise on any failure (nothing left behind).

    Raises :class:`ValidationError` for a target that exists or whose folder is
    missing, :class:`FederationError` on PostgreSQL (with the ``pg_dump``
    command to use), :class:`StorageError` when the source cannot be read or
    the copy fails its integrity check, :class:`FileStorageError` when the
    target's disk refuses the copy.
    """
    s = settings
    if s.db_url:
        raise FederationError(
            "`federation backup` copies SQLite databases; back up PostgreSQL with its own tool: "
            f"{pg_dump_command(s.db_url, Path(dest).expanduser())} (the password from PGPASSWORD or "
            "~/.pgpass; restore with pg_restore --clean --dbname=URL FILE)")
    dest = check_target(Path(dest))
    source = s.db_path
    if not source.is_file():
        raise StorageError(f"there is no SQLite database at {source} to back up (FEDERATION_DB / --db)")
    tmp = dest.parent / f".{dest.name}.{os.getpid()}.backup-tmp"
    started = time.perf_counter()
    log.info("backup_started", source=str(source), target=str(dest))
    try:
        try:
            src = sqlite3.connect(str(source), timeout=BUSY_TIMEOUT_S)
        except sqlite3.Error as exc:
            raise StorageError(f"cannot open the database {source}: {exc}") from exc
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))  # a refusal is an OSError here
            dst = sqlite3.connect(str(tmp))
            try:
                try:
                    # pages=-1: the whole database in one step, so from one read snapshot; a
                    # step-wise copy would restart at every write of another connection.
                    src.backup(dst, pages=-1)
                except sqlite3.OperationalError as exc:
                    if "full" in str(exc).lower() or "disk" in str(exc).lower():
                        raise FileStorageError(tmp, OSError(28, str(exc)), "write the backup") from exc
                    raise StorageError(f"the backup of {source} failed: {exc}") from exc
                except sqlite3.DatabaseError as exc:
                    raise StorageError(f"cannot read the database {source}: {exc}") from exc
                with contextlib.suppress(sqlite3.Error):  # when it was taken: what `federation restore` weighs
                    with dst:
                        dst.execute("INSERT OR REPLACE INTO federation_meta (key, value) VALUES ('backup_taken_at', ?)",
                                    (_clock.now(),))
                dst.execute("PRAGMA journal_mode = DELETE")  # one self-contained file, no -wal beside it
                problems = [r[0] for r in dst.execute("PRAGMA integrity_check").fetchall()]
                try:
                    version = int(dst.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] or 0)
                except sqlite3.Error:
                    version = 0
            finally:
                dst.close()
        finally:
            src.close()
        if problems != ["ok"]:
            raise StorageError(f"the copy of {source} failed PRAGMA integrity_check ({'; '.join(problems[:5])}); "
                               f"nothing was written to {dest}: run `federation doctor`")
        if version == 0:
            raise StorageError(f"{source} holds no federation schema: nothing to back up")
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, dest)  # never replaces: a file that appeared meanwhile wins, and we say so
        except FileExistsError:
            raise ValidationError(f"{dest} appeared while the backup ran; the backup was discarded") from None
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
                raise
            if dest.exists():  # a filesystem without hard links: check, then rename
                raise ValidationError(f"{dest} appeared while the backup ran; the backup was discarded") from None
            os.rename(tmp, dest)
        _fsync_dir(dest.parent)
    except OSError as exc:
        raise FileStorageError.wrap(exc, exc.filename or tmp, "write the backup") from exc
    finally:
        _cleanup(tmp)
    result = BackupResult(path=str(dest), source=str(source), bytes=dest.stat().st_size, integrity="ok",
                          schema_version=version, seconds=round(time.perf_counter() - started, 3))
    log.info("backup_written", **result.to_json())
    if version < schema.LATEST:
        log.warning("backup_old_schema", path=str(dest), schema_version=version, latest=schema.LATEST)
    return result


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a directory be fsync'ed
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
