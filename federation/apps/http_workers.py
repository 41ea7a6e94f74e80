"""``federation serve --http --workers N``: N processes behind one port.

The supervisor (:func:`supervise`) reserves the port (:func:`reserve`, ``SO_REUSEPORT``), forks the
workers, starts again one that dies (giving up after :data:`WORKER_MAX_QUICK_EXITS` quick exits in a
row) and stops them all when it is asked to stop; each worker listens on the port itself
(:func:`listen_too`) and is a server of its own (:mod:`federation.apps.mcp_http`).
"""

from __future__ import annotations

import contextlib
import socket
import time
from typing import Any, Callable

from .._logging import library_logger

log = library_logger("federation.mcp_http")

#: Longest uvicorn waits for requests in flight (a waiting pulse) when asked to stop, in seconds.
GRACEFUL_STOP_S = 3


def reserve(host: str, port: int) -> socket.socket:
    """The port, bound with ``SO_REUSEPORT`` and not listening (it is the workers' sockets that listen),
    or an OSError saying why not."""
    from .dashboard.app import listen

    return listen(host, port, reserve_only=True)


def listen_too(reserved: socket.socket) -> socket.socket:
    """A listening socket of this worker on the address *reserved* holds (``SO_REUSEPORT``)."""
    sock = socket.socket(reserved.family, reserved.type, reserved.proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(reserved.getsockname())
    sock.listen(128)
    return sock


#: A worker that exits sooner than this after its start counts as failing to start.
WORKER_MIN_LIFE_S = 5.0
#: Failed starts in a row after which the supervisor gives up (and stops the other workers).
WORKER_MAX_QUICK_EXITS = 5
#: Longest the supervisor waits for its workers to stop (beyond their graceful stop) before killing them.
WORKER_STOP_S = GRACEFUL_STOP_S + 10


def supervise(sock: Any, workers: int, make_run: Callable[[], Callable[[int], None]], url: str,
              on_listening: Callable[[str], None] | None) -> None:
    """Fork *workers* processes serving on *sock*, start again one that dies, stop them all when this
    process is asked to stop (SIGTERM/SIGINT: :class:`~federation.apps.signals.Terminated`)."""
    import os

    run = make_run()
    children: dict[int, tuple[int, float]] = {}  # pid -> (worker number, started at)

    def start(number: int) -> None:
        pid = os.fork()
        if pid == 0:  # the worker: never returns into the supervisor's code
            code = 0
            try:
                become_worker()
                run(number)
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 0
            except BaseException:  # noqa: BLE001 - logged; the supervisor starts another
                log.exception("mcp_http_worker_crashed", worker=number)
                code = 1
            from .signals import exit_now

            exit_now(code)
        children[pid] = (number, time.monotonic())

    started = time.monotonic()
    stopped_by = None
    quick_exits = 0
    try:
        for number in range(1, workers + 1):
            start(number)
        if on_listening is not None:
            on_listening(url)
        while children:
            pid, status = os.wait()
            if pid not in children:
                continue
            number, since = children.pop(pid)
            code = os.waitstatus_to_exitcode(status)
            quick = time.monotonic() - since < WORKER_MIN_LIFE_S
            quick_exits = quick_exits + 1 if quick else 0
            log.error("mcp_http_worker_exited", worker=number, pid=pid, exit_code=code,
                      detail="starting another" if quick_exits < WORKER_MAX_QUICK_EXITS else
                      f"{quick_exits} workers in a row exited within {WORKER_MIN_LIFE_S:g} s of their start: "
                      "stopping (see the workers' errors above)")
            if quick_exits >= WORKER_MAX_QUICK_EXITS:
                raise SystemExit(1)
            if quick:
                time.sleep(min(2.0, 0.1 * 2 ** quick_exits))
            start(number)
    except SystemExit as exc:  # SIGTERM/SIGINT through the CLI's handler, or the workers keep failing
        stopped_by = getattr(exc, "signal", None) or "exit"
        raise
    finally:
        _stop_workers(children)
        sock.close()
        log.info("mcp_http_stopped", url=url, workers=workers, seconds=round(time.monotonic() - started, 1),
                 **({"signal": stopped_by} if stopped_by else {}))


def become_worker() -> None:
    """In a worker just forked: a stop signal stops it gracefully once (a second one, from the supervisor
    after the terminal's Ctrl-C, is ignored); it stops too when the supervisor dies (Linux)."""
    import signal

    from .signals import STOP_SIGNALS, Terminated

    def stop(signum: int, frame: Any) -> None:
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        raise Terminated(signum)

    for sig in STOP_SIGNALS:
        signal.signal(sig, stop)
    _die_with_parent()


def _die_with_parent() -> None:
    """SIGTERM this process when its parent (the supervisor) dies, killed or not (Linux prctl; elsewhere
    nothing)."""
    import ctypes
    import os
    import signal

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the supervisor died before the call above
        os.kill(os.getpid(), signal.SIGTERM)


def _stop_workers(children: dict[int, tuple[int, float]]) -> None:
    """SIGTERM every worker, wait for them (a graceful stop each), then SIGKILL those still running."""
    import os
    import signal

    for pid in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + WORKER_STOP_S
    while children and time.monotonic() < deadline:
        for pid in list(children):
            with contextlib.suppress(ChildProcessError):
                done, _status = os.waitpid(pid, os.WNOHANG)
                if not done:
                    continue
            children.pop(pid)
        time.sleep(0.05)
    for pid, (number, _since) in list(children.items()):
        log.error("mcp_http_worker_killed", worker=number, pid=pid,
                  detail=f"still running {WORKER_STOP_S} s after SIGTERM")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
        children.pop(pid)
