"""``federation serve --agent NAME`` with a sampler thread: where a stdio server's memory is (issue 30).

    python bench/_stdio_probe.py OUT.jsonl NAME SECONDS

Runs the real stdio server (``federation.cli``, so ``serve``'s own set-up -- the capped malloc arenas --
applies) and every SECONDS appends one JSON line to OUT.jsonl: RSS (anonymous and file-backed), glibc's
heap (``mallinfo2``: bytes taken from the system, in use, free-but-kept, mmap'd blocks), Python's small-object
arenas (``sys._debugmallocstats``: 1 MiB each, mmap'd, not in ``mallinfo2``), SQLite's heap
(``sqlite3_memory_used``), objects the garbage collector tracks, threads and descriptors.  Stdout stays
the protocol's.  ``bench_soak.py --stdio-probe`` runs its stdio servers this way.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import json
import os
import sys
import tempfile
import threading
import time


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                     "fsmblks", "uordblks", "fordblks", "keepcost")]


def _libs():
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    libc.mallinfo2.restype = _MallInfo2
    try:
        sqlite = ctypes.CDLL(ctypes.util.find_library("sqlite3") or "libsqlite3.so.0")
        sqlite.sqlite3_memory_used.restype = ctypes.c_int64
    except OSError:  # Python's sqlite3 linked statically: its heap is not reachable from here
        sqlite = None
    return libc, sqlite


def _pymalloc_arenas() -> int:
    """Python's small-object arenas currently allocated (``sys._debugmallocstats`` writes to C's stderr)."""
    with tempfile.TemporaryFile() as tmp:
        saved = os.dup(2)
        os.dup2(tmp.fileno(), 2)
        try:
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        tmp.seek(0)
        for line in tmp.read().decode(errors="replace").splitlines():
            if line.startswith("# arenas allocated current"):
                return int(line.split("=")[-1].strip().replace(",", ""))
    return -1


#: the library's per-process caches (module, name) whose entries are counted at each sample
CACHES = (("federation.stores._fs_walk", "_parts_cache"),
          ("federation.stores._fs_stamps", "_stamp_folders"), ("federation.stores._fs_locks", "_locks_folders"),
          ("federation.core", "_tree_cache"), ("federation.stores.file_history", "_history"),
          ("federation.stores.file_history", "_sent"))


def cache_sizes() -> dict[str, int]:
    sizes = {}
    for module, name in CACHES:
        found = getattr(sys.modules.get(module), name, None)
        if found is not None:  # a dict, or a bounded holder that counts its own (HeldFolders.count())
            sizes[name] = found.count() if hasattr(found, "count") and not hasattr(found, "__len__") else len(found)
    return sizes


def anon_by_mapping() -> dict[str, float]:
    """Resident anonymous memory (MB) from /proc/self/smaps: glibc's main heap (``[heap]``) and the rest
    (other arenas' heaps, Python's arenas, thread stacks: adjacent anonymous mappings merge, so their
    sizes do not tell them apart)."""
    kinds = {"heap": 0, "rest": 0}
    kind = None
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split(None, 5)
            if "-" in head[0] and len(head) >= 5 and ":" in head[3]:  # a mapping's first line
                name = head[5].strip() if len(head) > 5 else ""
                kind = "heap" if name == "[heap]" else None if name else "rest"
            elif kind is not None and line.startswith("Rss:"):
                kinds[kind] += int(line.split()[1])
    return {k: round(v / 1024, 2) for k, v in kinds.items()}


def big_containers(least: int = 5000) -> list[str]:
    """The dicts, lists and sets the collector tracks that hold *least* entries or more: what each is
    (its type, size, a key or item), for a container that grows with traffic."""
    found = []
    for obj in gc.get_objects():
        if type(obj) in (dict, list, set) and len(obj) >= least:
            first = next(iter(obj), None)
            found.append(f"{type(obj).__name__}[{len(obj)}] {repr(first)[:60]}")
    return sorted(found)


def sample(libc, sqlite) -> dict:
    status = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile", "Threads"):
                status[key] = int(value.split()[0])
    mi = libc.mallinfo2()
    return {"rss_mb": status["VmRSS"] / 1024, "anon_mb": status.get("RssAnon", 0) / 1024,
            "file_mb": status.get("RssFile", 0) / 1024, "threads": status["Threads"],
            "malloc_system_mb": mi.arena / 2**20, "malloc_used_mb": mi.uordblks / 2**20,
            "malloc_free_mb": mi.fordblks / 2**20, "malloc_mmap_mb": mi.hblkhd / 2**20,
            "pymalloc_arenas": _pymalloc_arenas(),
            "sqlite_mb": sqlite.sqlite3_memory_used() / 2**20 if sqlite else -1.0,
            "gc_objects": len(gc.get_objects()), "fds": len(os.listdir("/proc/self/fd")),
            "caches": cache_sizes(), "anon_by_mapping": anon_by_mapping(),
            "big": big_containers()}


def main() -> None:
    out, agent, every = sys.argv[1], sys.argv[2], float(sys.argv[3])
    libc, sqlite = _libs()
    started = time.time()

    def sampler() -> None:
        while True:
            time.sleep(every)
            record = {"t": round(time.time() - started, 1), **sample(libc, sqlite)}
            with open(out, "a") as f:
                f.write(json.dumps(record) + "\n")

    threading.Thread(target=sampler, daemon=True, name="stdio-probe").start()
    from federation.cli import main as cli

    sys.argv = ["federation", "serve", "--agent", agent]
    cli()


if __name__ == "__main__":
    main()
