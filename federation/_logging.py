"""Logging set-up for the applications (CLI and MCP server), never for the library.

Rendering: JSON lines when stderr is not a terminal, readable console output
on one; with ``FEDERATION_LOG_FILE`` set, JSON lines appended to that file
(what ``federation report --log`` reads).  Nothing is ever written to stdout.
"""

from __future__ import annotations

import logging
import os
import sys

import structlog


def configure(level: int = logging.INFO, force_json: bool = False) -> None:
    path = os.environ.get("FEDERATION_LOG_FILE", "").strip()
    if path:
        stream = open(path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115 - lives as long as the process
        renderer = structlog.processors.JSONRenderer()
    else:
        stream = sys.stderr
        tty = stream.isatty() and not force_json
        renderer = structlog.dev.ConsoleRenderer() if tty else structlog.processors.JSONRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
