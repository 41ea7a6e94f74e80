"""The C allocator of a long-running server: glibc's malloc arenas bounded by configuration, not by threads.

glibc gives each thread that allocates while another holds an arena an arena of its own, up to 8 per core
(16 on 2 cores, 256 on 32).  A server's worker threads each allocate in theirs (SQLite's pages, the JSON of
the files, HTTP buffers), and the free space left in each arena between two calls is kept, not returned:
issue 30's soak measured the HTTP server's free-but-kept arena space at 10-12 MB in phase 3 (worker
threads) and 3-4 MB with two arenas, at the same throughput.  :func:`bound_malloc_arenas` caps the arenas
of this process (``mallopt(M_ARENA_MAX)``) before the server starts its threads.

What an arena keeps free inside its heap (between blocks still in use) glibc returns only from the heap's
top, and a server's heap is never empty at the top: under steady traffic the stdio servers' RSS rose by a
few MB an hour while what was in use stayed flat (issue 30).  :func:`trim_periodically` has a daemon
thread hand the whole free pages back (``malloc_trim(0)``) once a minute, in a forked worker too.

Only the servers call these (``federation serve``): importing or using the library changes nothing in the
process.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
import threading
import time

__all__ = ["SERVER_ARENAS", "TRIM_EVERY_S", "bound_malloc_arenas", "trim_periodically"]

#: malloc arenas a server process uses, unless MALLOC_ARENA_MAX says otherwise
SERVER_ARENAS = 2
_M_ARENA_MAX = -8  # glibc's malloc.h
#: seconds between two hand-backs of a server's free heap pages
TRIM_EVERY_S = 60.0


def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # glibc only  # noqa: B018
        libc.malloc_trim  # noqa: B018
    except (OSError, AttributeError):
        return None
    return libc


def bound_malloc_arenas(arenas: int = SERVER_ARENAS) -> bool:
    """Cap this process's malloc arenas at *arenas*; whether it was done.

    Nothing is done where the C library is not glibc (musl, macOS: no per-thread arenas to cap), or when
    the operator set ``MALLOC_ARENA_MAX`` (glibc read it at start-up: theirs wins).
    """
    if os.environ.get("MALLOC_ARENA_MAX", "").strip():
        return False
    libc = _glibc()
    if libc is None:
        return False
    mallopt = libc.mallopt
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(_M_ARENA_MAX, int(arenas)) == 1


_trim_every: float | None = None  # set once this process trims (a forked child starts its own thread)


def trim_periodically(every_s: float = TRIM_EVERY_S) -> bool:
    """Hand this process's whole free heap pages back to the system every *every_s* seconds, from a daemon
    thread (and from one in each child forked later); whether it was started (glibc only; once per
    process: a second call changes nothing)."""
    global _trim_every
    if _trim_every is not None:
        return True
    libc = _glibc()
    if libc is None:
        return False
    trim = libc.malloc_trim
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    _trim_every = float(every_s)

    def run() -> None:
        while True:
            time.sleep(_trim_every)
            trim(0)

    threading.Thread(target=run, name="malloc-trim", daemon=True).start()
    return True


def _after_fork() -> None:
    global _trim_every
    every, _trim_every = _trim_every, None
    if every is not None:  # the parent's thread did not come along
        trim_periodically(every)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)
