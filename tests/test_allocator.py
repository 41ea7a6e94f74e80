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
