"""Helpers shared by the benchmarks: temp federations, process pools, timing."""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


@contextlib.contextmanager
def federation_env(phase: int, db_url: str | None = None) -> Iterator[Path]:
    """A fresh root (and SQLite file) selected through the environment."""
    root = Path(tempfile.mkdtemp(prefix="fedbench-"))
    saved = {k: v for k, v in os.environ.items() if k.startswith("FEDERATION_")}
    for k in saved:
        del os.environ[k]
    from federation import config
    from federation.stores.sqlstore import forget_stores

    os.environ["FEDERATION_ROOT"] = str(root)
    os.environ.update(config.phase_env(phase))
    if db_url:
        os.environ["FEDERATION_DB_URL"] = db_url

    config.reset()
    forget_stores()
    try:
        yield root
    finally:
        forget_stores()
        for k in [k for k in os.environ if k.startswith("FEDERATION_")]:
            del os.environ[k]
        os.environ.update(saved)
        config.reset()
        shutil.rmtree(root, ignore_errors=True)


def run_processes(n: int, target: Callable[[int], object]) -> float:
    """Run target(i) in *n* forked processes started together; wall seconds."""
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(n + 1)

    def child(i: int) -> None:
        from federation.stores.sqlstore import forget_stores

        forget_stores()  # never reuse the parent's connections
        barrier.wait()
        target(i)

    procs = [ctx.Process(target=child, args=(i,)) for i in range(n)]
    for p in procs:
        p.start()
    barrier.wait()
    t0 = time.perf_counter()
    for p in procs:
        p.join()
    elapsed = time.perf_counter() - t0
    bad = [p.exitcode for p in procs if p.exitcode != 0]
    if bad:
        raise SystemExit(f"a benchmark process failed: exit codes {bad}")
    return elapsed


def best_of(repeat: int, fn: Callable[[], float]) -> float:
    return min(fn() for _ in range(repeat))


@contextlib.contextmanager
def postgres_url(url: str | None, needed: bool = True) -> Iterator[str | None]:
    """*url*, or a throwaway PostgreSQL server's (tests/pgserver.py), removed afterwards; *url* as it
    is when PostgreSQL is not *needed*."""
    if url or not needed:
        yield url
        return
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from pgserver import PgServer

    server = PgServer().start()
    try:
        yield server.url
    finally:
        server.destroy()
