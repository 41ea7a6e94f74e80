"""SIGTERM (and Ctrl-C) as a clean exit, for the CLI's long-running commands (``serve``, ``dashboard``).

A process killed by SIGTERM's default action runs no ``finally`` block and no
atexit handler: the rollout runtime would lose the counts it holds (up to
``FEDERATION_COUNTS_FLUSH`` seconds of them) and leave its fleet announcement
behind until it shows as gone.  :func:`exit_on_stop_signals` turns SIGTERM
and SIGINT into a :class:`Terminated` exception (a ``SystemExit``) raised in
the main thread, which unwinds the command.  Only the CLI calls it: importing
or using the library installs no signal handler.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import sys
from types import FrameType
from typing import NoReturn

__all__ = ["Terminated", "exit_on_stop_signals", "exit_now", "STOP_SIGNALS"]

#: what service managers (SIGTERM) and terminals (SIGINT, Ctrl-C) send to stop a process
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Terminated(SystemExit):
    """The process was asked to stop by a signal (``signal``: its name); exit status 0."""

    def __init__(self, signum: int):
        super().__init__(0)
        self.signal = signal.Signals(signum).name


def exit_on_stop_signals() -> None:
    """From now on SIGTERM and SIGINT raise :class:`Terminated` in the main thread (call it from there).

    A second signal while the first one unwinds gets the default action: a
    stop that hangs can still be forced with a plain ``kill`` (or Ctrl-C again).
    A handler of our own for SIGINT also keeps ``asyncio.run`` from installing
    its own, which cancels the main task and waits for threads it cannot cancel.
    """

    def stop(signum: int, frame: FrameType | None) -> None:
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        raise Terminated(signum)

    for sig in STOP_SIGNALS:
        signal.signal(sig, stop)


def exit_now(code: int = 0) -> NoReturn:
    """End the process as a normal exit would -- atexit handlers, then the standard streams flushed --
    without waiting for threads that are not daemons.

    For a stop whose stack has unwound but a thread of a library stays blocked
    (the MCP SDK reads stdin in such a thread: until the client closes the pipe,
    the interpreter's own exit would wait for it before running any atexit handler).
    """
    try:
        atexit._run_exitfuncs()  # what the interpreter runs at exit (logging's flush, the rollout runtime's)
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code)
