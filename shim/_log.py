"""Logging from a library that must never write to stdout.

structlog's built-in default prints to **stdout**.  A library imported by an
application that never configured structlog — the drop-in case: an existing
MCP server speaking JSON-RPC on stdout imports a patched ``core.py`` — would
corrupt that application's protocol stream with its first event.

:func:`library_logger` returns a logger that follows the application's
structlog configuration when there is one (``structlog.is_configured()``), and
otherwise hands each event, rendered as one JSON object, to the standard
:mod:`logging` module under the logger's name.  With no logging set up either,
Python's last-resort handler writes WARNING and above to **stderr**, so a
``shadow_mismatch`` is seen and routine INFO events (``schema_migrated``) are
not; an application that configures :mod:`logging` routes them as it likes.
The decision is taken per call, so configuring structlog later (or
``structlog.testing.capture_logs``) takes effect at once.
"""

from __future__ import annotations

import logging
from typing import Any

import structlog

__all__ = ["library_logger"]

_STDLIB_PROCESSORS = (
    structlog.stdlib.filter_by_level,  # first: nothing is rendered for a level nobody shows
    structlog.stdlib.add_logger_name,
    structlog.stdlib.add_log_level,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
    structlog.processors.format_exc_info,
    structlog.processors.JSONRenderer(),
)


class LibraryLogger:
    """A structlog-style logger (``log.warning("event", key=value)``) for library code."""

    __slots__ = ("name", "_stdlib")

    def __init__(self, name: str):
        self.name = name
        self._stdlib: Any = None

    def _target(self) -> Any:
        if structlog.is_configured():
            return structlog.get_logger(self.name)
        if self._stdlib is None:
            self._stdlib = structlog.wrap_logger(logging.getLogger(self.name), processors=list(_STDLIB_PROCESSORS),
                                                 wrapper_class=structlog.stdlib.BoundLogger)
        return self._stdlib

    def __getattr__(self, method: str) -> Any:
        return getattr(self._target(), method)


def library_logger(name: str) -> LibraryLogger:
    """The logger library code uses in place of ``structlog.get_logger(name)``."""
    return LibraryLogger(name)
