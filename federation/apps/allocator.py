"""The C allocator of a long-running server: glibc's malloc arenas bounded by configuration, not by threads.

glibc gives each thread that allocates while another holds an arena an arena of its own, up to 8 per core
(16 on 2 cores, 256 on 32).  A server's worker threads each allocate in theirs (SQLite's pages, the JSON of
the files, HTTP buffers), and the free space left in each arena between two calls is kept, not returned:
issue 30's soak measured the HTTP server's free-but-kept arena space at 10-12 MB in phase 3 (worker
threads) and 3-4 MB with two arenas, at the same throughput.  :func:`bound_malloc_arenas` caps the arenas
of this process (``mallopt(M_ARENA_MAX)``) before the server starts its threads.  Only the servers call
it (``federation serve``): importing or using the library changes nothing in the process.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

__all__ = ["SERVER_ARENAS", "bound_malloc_arenas"]

#: malloc arenas a server process uses, unless MALLOC_ARENA_MAX says otherwise
SERVER_ARENAS = 2
_M_ARENA_MAX = -8  # glibc's malloc.h


def bound_malloc_arenas(arenas: int = SERVER_ARENAS) -> bool:
    """Cap this process's malloc arenas at *arenas*; whether it was done.

    Nothing is done where the C library is not glibc (musl, macOS: no per-thread arenas to cap), or when
    the operator set ``MALLOC_ARENA_MAX`` (glibc read it at start-up: theirs wins).
    """
    if not sys.platform.startswith("linux") or os.environ.get("MALLOC_ARENA_MAX", "").strip():
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # glibc only  # noqa: B018
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(_M_ARENA_MAX, int(arenas)) == 1
