"""The federation's logging: the loggers its library code uses, and the set-up of its applications.

Library code (every module of ``federation``) logs through :func:`library_logger` and never
configures logging: structlog's built-in default prints to **stdout**, which would corrupt the
JSON-RPC stream of an MCP server that imports the package without configuring structlog.  The
logger follows the application's structlog configuration when there is one, and otherwise hands
each event, rendered as one JSON object, to the standard :mod:`logging` module under its name
(Python's last resort then shows WARNING and above on **stderr**).  The decision is taken per
call, so configuring structlog later (or ``structlog.testing.capture_logs``) takes effect at once.

The applications (CLI and MCP server) call :func:`configure`: JSON lines when stderr is not a
terminal, readable console output on one; with ``FEDERATION_LOG_FILE`` set, JSON lines appended to
that file (what ``federation report --log`` reads).  Nothing is ever written to stdout.

On a terminal only warnings and errors are shown, so that a person reads a
command's own output, not ``schema_migrated`` between its lines; ``verbose``
(the CLI's ``-v``) or ``FEDERATION_LOG_FILE`` keeps every event.

(The shim, a separate and removable package, has a logger of its own for its events.)
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import structlog

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


def configure(level: int | None = None, force_json: bool = False, verbose: bool = False) -> None:
    path = os.environ.get("FEDERATION_LOG_FILE", "").strip()
    if path:
        stream = open(path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115 - lives as long as the process
        renderer = structlog.processors.JSONRenderer()
        tty = False
    else:
        stream = sys.stderr
        tty = stream.isatty() and not force_json
        renderer = structlog.dev.ConsoleRenderer() if tty else structlog.processors.JSONRenderer()
    if level is None:
        level = logging.WARNING if tty and not verbose else logging.INFO
    shared = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    # ConsoleRenderer formats exc_info itself; JSON needs the traceback as a string field.
    tracebacks = [] if isinstance(renderer, structlog.dev.ConsoleRenderer) else [structlog.processors.format_exc_info]
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, *shared, *tracebacks, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
    _route_stdlib(stream, shared, [*tracebacks, renderer], level)


def _route_stdlib(stream, shared: list, render: list, level: int) -> None:
    """Send stdlib logging (libraries such as the MCP SDK) to the same stream and format.

    Installed before any library calls ``logging.basicConfig``, so theirs is a
    no-op and nothing of theirs reaches stdout.
    """
    handler = logging.StreamHandler(stream)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *render],
    ))
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_federation", False)]:
        root.removeHandler(old)
    handler._federation = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(max(level, logging.WARNING))
