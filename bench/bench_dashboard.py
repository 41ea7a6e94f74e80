"""Dashboard page load and /metrics scrape over a large control plane.

A fleet of --processes processes, each with --days of hourly counts for every
entity (written with the control plane's own writers, in its file layout: one
file per process and hour; --busy-minutes cells per hour, 1 by default),
1,000 recent mismatches, and a small database; then a real uvicorn server on a
free port, timed from this process over HTTP:

- page load: ``GET /`` (the HTML) plus ``GET /api/dashboard`` (its data call),
  window 24 h and 7 d;
- ``GET /metrics`` (the Prometheus scrape);
- ``GET /api/status`` (24 h and 7 d).

Prints the median and the worst of --rounds rounds in ms against the 200 ms
target (2 s for the 7-day window); and the first call of each window on a new
server, before its hours are kept (cold), and the first 7-day call as
``federation dashboard`` starts (its warm-up thread reading the hours at the
same time).  --merge merges the counts as they aged first (what a running
fleet's maintenance keeps; without it, every process's file of every hour is
there, as when no process maintained them).  A script, not a test: run it on
a quiet machine.

    python bench/bench_dashboard.py [--processes 50] [--days 30] [--rounds 10]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import socket
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterator

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

TARGET_MS = 200.0
#: the dashboard's 7-day window (issue 30)
WEEK_TARGET_MS = 2000.0
ENTITIES = ("messages", "context", "expertise", "profiles", "polls", "sessions")


def write_control_plane(root: Path, processes: int, days: int, busy_minutes: int = 1, seed: int = 1) -> int:
    """Counts files, fleet announcements and mismatches as the processes of the control plane write them.

    Each process counted in *busy_minutes* minutes of every hour for every entity (1: hourly counts;
    a process busy all the time has a cell per minute, 60).  Returns the number of cells written.
    """
    from federation.rollout import _counts, _fleet, _io

    rnd = random.Random(seed)
    now = datetime.now(timezone.utc)
    hour = _counts.HOUR
    first_hour = int((now - timedelta(days=days)).timestamp()) // hour * hour
    last_hour = int(now.timestamp()) // hour * hour
    n_bounds = len(_counts.LATENCY_BOUNDS_MS) + 1
    width = _counts.BUCKET_SECONDS
    cells_written = 0
    hists: dict[tuple[int, str], list[int]] = {}
    for p in range(processes):
        pid = 100_000 + p
        started = now - timedelta(days=days)
        for h in range(first_hour, last_hour + 1, hour):
            cells = []
            for minute in range(busy_minutes):
                bucket = h + minute * width
                for entity in ENTITIES:
                    comparisons = rnd.randint(1, 40)
                    mismatches = 1 if rnd.random() < 0.01 else 0
                    latency = {}
                    for side in _counts.SIDES:
                        hist = hists.get((comparisons, side))  # drawn once per count and side: a busy fleet's
                        if hist is None:                       # millions of cells are written in minutes
                            hist = hists[comparisons, side] = [0] * n_bounds
                            for _ in range(comparisons):
                                hist[min(n_bounds - 1, int(rnd.expovariate(0.6)))] += 1
                        latency[side] = {"counts": hist, "sum_ms": round(comparisons * 0.4, 6)}
                    cells.append(((bucket, entity, 3), {"comparisons": comparisons, "mismatches": mismatches,
                                                        "errors": 0, "latency": latency}))
            cells_written += len(cells)
            _counts.write_counts(_counts.counts_file(root, h, pid, started.timestamp()), pid, _io.iso(started),
                                 width, cells)
        doc = {"host": _io.HOST, "pid": pid, "agent": f"agent{p}", "phase": 3,
               "source": "env" if p % 10 == 0 else "flag", "sample": 1.0, "version": "bench",
               "started_at": _io.iso(started), "last_seen": _io.iso(now - timedelta(seconds=p % 60))}
        _io.write_atomic(_fleet.fleet_file(root, pid), _io.dumps(doc))
        mismatches = [{"at": _io.iso(now - timedelta(minutes=i)), "host": _io.HOST, "pid": pid,
                       "entity": ENTITIES[i % len(ENTITIES)], "key": f"key-{p}-{i}", "phase": 3, "op": "load",
                       "authority": "db", "diff": [{"field": "text", "db": "a", "files": "b"}]}
                      for i in range(1000 // processes)]
        _counts.append_mismatches(_counts.mismatch_file(root, pid), mismatches, 0)
    return cells_written


def timed(url: str, rounds: int) -> list[float]:
    out = []
    for _ in range(rounds):
        started = time.perf_counter()
        with urllib.request.urlopen(url, timeout=60) as resp:
            resp.read()
            assert resp.status == 200, (url, resp.status)
        out.append((time.perf_counter() - started) * 1000)
    return out


def page_load(base: str, window: str, rounds: int) -> list[float]:
    out = []
    for _ in range(rounds):
        started = time.perf_counter()
        for path in (f"/?window={window}", f"/api/dashboard?window={window}"):
            with urllib.request.urlopen(base + path, timeout=60) as resp:
                resp.read()
                assert resp.status == 200, (path, resp.status)
        out.append((time.perf_counter() - started) * 1000)
    return out


@contextlib.contextmanager
def serving(app) -> Iterator[str]:
    """A real uvicorn server of *app* on a free port, in a thread; its base URL."""
    import uvicorn

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=int, default=50)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--busy-minutes", type=int, default=1,
                        help="minutes of each hour with counts, per process and entity (60: always busy)")
    parser.add_argument("--merge", action="store_true",
                        help="merge the counts as they aged first (what the fleet's maintenance keeps: the "
                             "current hours' files, per-minute files for 48 h, per-hour files before)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-dashboard-") as tmp:
        root = Path(tmp)
        os.environ.update({"FEDERATION_ROOT": str(root), "FEDERATION_DB": str(root / "federation.db"),
                           "FEDERATION_PHASE": "3", "FEDERATION_USE_DB": "1"})
        os.environ.pop("FEDERATION_DB_URL", None)
        from federation import config, context
        from federation._logging import configure

        configure()  # the application's logging: structlog lines to stderr, never stdout
        config.reset()
        for i in range(50):  # a small database, so the row counts are real
            context.set_context(f"agent{i}", f"text {i}")
        started = time.perf_counter()
        cells = write_control_plane(root, args.processes, args.days, args.busy_minutes)
        size = sum(f.stat().st_size for f in (root / "control").rglob("*") if f.is_file())
        print(f"control plane: {args.processes} processes x {args.days} days x {args.busy_minutes} minute(s) an hour "
              f"x {len(ENTITIES)} entities = "
              f"{cells:,} cells, {size / 1e6:.1f} MB of files (written in {time.perf_counter() - started:.1f} s)")

        if args.merge:
            from federation.rollout import _counts

            started = time.perf_counter()
            _counts.maintain(root, wait=True)
            _counts.maintain(root, now=time.time() + _counts.GRACE_SECONDS + 1, wait=True)
            kept = [f for f in (root / "control" / "counts").rglob("*") if f.is_file()]
            print(f"merged as they aged in {time.perf_counter() - started:.1f} s: {len(kept):,} counts files kept")
        from federation.apps.dashboard import create_app
        from federation.apps.dashboard.app import _warm

        with serving(create_app(settings=config.settings())) as base:  # imports, first database connection
            timed(base + "/api/dashboard", 1)
        rows = []
        # cold: a new server each, nothing read yet (no warm-up), its first call of the window
        for window in ("24h", "7d"):
            with serving(create_app(settings=config.settings())) as base:
                rows.append((f"first /api/dashboard?window={window} (cold)",
                             timed(base + f"/api/dashboard?window={window}", 1)))
        # as `federation dashboard` starts: the warm-up thread reading both windows, the first 7-day call at once
        app = create_app(settings=config.settings())
        with serving(app) as base:
            threading.Thread(target=_warm, args=(app,), daemon=True).start()
            rows.append(("first 7 d call after start (warm-up on)", timed(base + "/api/dashboard?window=7d", 1)))
            timed(base + "/metrics", 1)
            rows += [("page load 24 h (/ + /api/dashboard)", page_load(base, "24h", args.rounds)),
                     ("page load 7 d (/ + /api/dashboard)", page_load(base, "7d", args.rounds)),
                     ("/metrics scrape", timed(base + "/metrics", args.rounds)),
                     ("/api/status", timed(base + "/api/status", args.rounds)),
                     ("/api/status?window=7d", timed(base + "/api/status?window=7d", args.rounds))]

    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())} ({os.cpu_count()} cores)")
    print(f"{'measurement':40} {'median ms':>10} {'worst ms':>10}  target (7 d: {WEEK_TARGET_MS:.0f} ms)")
    for name, values in rows:
        median = statistics.median(values)
        target = WEEK_TARGET_MS if "7d" in name or "7 d" in name else TARGET_MS
        verdict = "met" if median < target else "NOT met"
        print(f"{name:40} {median:10.1f} {max(values):10.1f}  {target:.0f} ms {verdict}")


if __name__ == "__main__":
    main()
