"""Exceptions raised by the federation state layer.

Every error a caller can act on derives from :class:`FederationError`.
"""

from __future__ import annotations

__all__ = [
    "FederationError",
    "ValidationError",
    "NotFoundError",
    "ConflictError",
    "ConfigError",
    "StorageError",
    "BackfillRequiredError",
    "CorruptFileError",
]


class FederationError(Exception):
    """Base class of every error the federation raises on purpose."""


class ValidationError(FederationError, ValueError):
    """The input is invalid (bad agent name, empty question, oversized content...)."""


class NotFoundError(FederationError, LookupError):
    """An unknown poll or session."""


class ConflictError(FederationError):
    """The operation conflicts with the current state (closed poll, not the creator...)."""


class ConfigError(FederationError):
    """A configuration value (environment variable or flag) is invalid."""


class StorageError(FederationError):
    """The storage could not complete the operation (database unavailable, busy for too long...)."""


class BackfillRequiredError(StorageError):
    """Phase 3/4 refuses to serve reads from a database that was never backfilled."""


class CorruptFileError(StorageError):
    """A legacy JSON file could not be read; it was left untouched."""

    def __init__(self, path: object, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")
