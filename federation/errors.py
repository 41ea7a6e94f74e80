"""Exceptions raised by the federation state layer.

Every error a caller can act on derives from :class:`FederationError`.
"""

from __future__ import annotations

import errno as _errno
import os as _os

__all__ = [
    "FederationError",
    "ValidationError",
    "NotFoundError",
    "ConflictError",
    "ConfigError",
    "StorageError",
    "BackfillRequiredError",
    "CorruptFileError",
    "FileStorageError",
    "AuthoritativeSideError",
    "PermissionDeniedError",
]


class FederationError(Exception):
    """Base class of every error the federation raises on purpose."""


class ValidationError(FederationError, ValueError):
    """The input is invalid (bad agent name, empty question, oversized content...)."""


class NotFoundError(FederationError, LookupError):
    """An unknown poll or session."""


class ConflictError(FederationError):
    """The operation conflicts with the current state (closed poll, not the creator...)."""


class PermissionDeniedError(FederationError):
    """The agent may not do this: a session's phase and roles are its lead's, its artifacts and reviews its
    members' (over MCP a tool error starting ``forbidden:``).  Reading stays open to every agent."""


class ConfigError(FederationError):
    """A configuration value (environment variable or flag) is invalid."""


class StorageError(FederationError):
    """The storage could not complete the operation (database unavailable, busy for too long...)."""


class BackfillRequiredError(StorageError):
    """Phase 3/4 refuses to serve reads from a database that was never backfilled."""


class AuthoritativeSideError(ConflictError):
    """A repair would write over the side that is authoritative in the current phase (``sync`` without ``force``)."""


class CorruptFileError(StorageError):
    """A legacy JSON file could not be read; it was left untouched."""

    def __init__(self, path: object, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class FileStorageError(StorageError):
    """A legacy file (or folder, or lock file) could not be read or written.

    Disk full, read-only filesystem, permission denied, I/O error...: the
    operation did not happen and nothing was half-written.  ``path`` is the
    file, ``errno`` the OS error number (``errno.ENOSPC``...), ``reason`` its text.
    """

    def __init__(self, path: object, cause: OSError, doing: str = "access"):
        self.path = str(path)
        self.errno = cause.errno
        self.reason = cause.strerror or str(cause)
        code = _errno.errorcode.get(cause.errno or 0)
        hint = _HINTS.get(cause.errno or 0, "")
        super().__init__(f"cannot {doing} {self.path}: {self.reason}" + (f" ({code})" if code else "") + hint)

    @classmethod
    def wrap(cls, exc: OSError, path: object = None, doing: str = "access") -> "FileStorageError":
        """The typed error of *exc*, naming *path* (or the file the OS error names)."""
        where = path if path is not None else (exc.filename if exc.filename is not None else "the federation root")
        return cls(_os.fsdecode(where) if isinstance(where, bytes) else where, exc, doing)


_HINTS = {
    _errno.ENOSPC: "; free space on that filesystem (`federation doctor` shows it), then retry",
    _errno.EDQUOT: "; the disk quota is exhausted: raise it or free space, then retry",
    _errno.EROFS: "; the filesystem is mounted read-only: remount it read-write, then retry",
    _errno.EACCES: "; the federation's user may not write there: fix the owner or mode",
    _errno.EPERM: "; the federation's user may not write there: fix the owner or mode",
    _errno.EIO: "; the disk reported an I/O error: check the device (dmesg) before retrying",
}
