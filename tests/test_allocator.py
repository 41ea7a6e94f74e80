"""A server's malloc arenas are capped (issue 30): glibc gives each allocating thread an arena of its own (8 per
core), and each keeps the free space its thread left; `federation serve` caps them before its threads start."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

THREADS = r"""
import ctypes, sys, threading
from federation.apps.allocator import bound_malloc_arenas
done = bound_malloc_arenas() if sys.argv[1] == "capped" else None
kept = []
alive = threading.Barrier(8)  # all alive at once: an ended thread's arena would be handed to the next
def work():
    alive.wait()
    kept.append([bytes(100_000 + i) for i in range(20)])  # past pymalloc's 512 bytes: malloc itself
    alive.wait()
threads = [threading.Thread(target=work) for _ in range(8)]
for t in threads: t.start()
for t in threads: t.join()
sys.stderr.flush()
ctypes.CDLL("libc.so.6").malloc_stats()  # one "Arena N:" block per arena, on stderr
print(done)
"""


def _arenas(mode: str) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    done = subprocess.run([sys.executable, "-c", THREADS, mode], capture_output=True, text=True, env=env,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    return sum(1 for line in done.stderr.splitlines() if line.startswith("Arena ")), done.stdout.strip()


@pytest.mark.skipif(not sys.platform.startswith("linux") or os.confstr("CS_GNU_LIBC_VERSION") is None,
                    reason="glibc's per-thread arenas")
def test_eight_allocating_threads_share_two_arenas_in_a_server():
    """Eight threads allocating at once: 2 arenas in a process that capped them, one per thread otherwise."""
    capped, done = _arenas("capped")
    free, _ = _arenas("free")
    assert done == "True"
    assert capped <= 2 < free, (capped, free)


TRIM = r"""
import os, sys, time
from federation.apps.allocator import trim_periodically

def anon_kib():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1])

blocks = [bytes(2000 + i % 7) for i in range(40_000)]  # ~80 MB of malloc'd blocks (past pymalloc's 512 B)
kept = blocks[::16]  # one in 16 stays: the heap's top is in use, its middle is free in runs of ~30 KB
del blocks
freed = anon_kib()
if sys.argv[1] == "trim":
    assert trim_periodically(0.2)
    if os.fork() == 0:  # a worker forked later trims too
        grown = [bytes(2000 + i % 7) for i in range(40_000)]
        kept2 = grown[::16]
        del grown
        before = anon_kib()
        time.sleep(1.5)
        os._exit(0 if before - anon_kib() > 20_000 else 3)
    _, status = os.wait()
    assert os.waitstatus_to_exitcode(status) == 0, "the forked child did not trim"
time.sleep(1.5)
print(freed - anon_kib())
"""


def _returned_kib(mode: str) -> int:
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    done = subprocess.run([sys.executable, "-c", TRIM, mode], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    return int(done.stdout.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux") or os.confstr("CS_GNU_LIBC_VERSION") is None,
                    reason="glibc's malloc_trim")
def test_a_server_hands_free_heap_pages_back_and_so_does_a_worker_it_forks():
    """Blocks freed between blocks still in use stay in the process (glibc returns only the heap's top);
    a server's trimming thread hands those pages back within its interval, in a forked worker too."""
    trimmed, kept = _returned_kib("trim"), _returned_kib("keep")
    assert trimmed > 20_000 and kept < 5_000, (trimmed, kept)
