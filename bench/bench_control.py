"""`rollout status` over 30 days of a fleet's counts, before and after the counts are merged as they age.

Generates the control plane a fleet of --processes processes leaves after --days
days (issue 30): one counts file per process and hour, as many hour folders and
files as real processes write (30 days x 100 processes: 72,100 files), each
with --busy-minutes minutes of per-minute cells carrying their per-second
counts, for 6 entities (written compactly: a few cells a file, so the run takes
a minute or two, not the ~275 KB a busy process writes an hour), plus 100 fleet
announcements.  Then, in the same run:

- ``rollout status`` (``federation.rollout.status()``: the default 24 h window,
  what ``federation rollout status`` and ``/api/status`` compute) and its 7-day
  window (the dashboard's longest), median of --rounds;
- the floor: ``status()`` of a window with no counts (the fleet and the flag only);
- one full maintenance pass (what ``federation prune`` runs), then a second after
  the grace period (the merged files removed);
- the same timings again.

Prints the files kept and the ratios after/before and against the floor.
A script, not a test: run it on a quiet machine.

    python bench/bench_control.py [--processes 100] [--days 30] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

ENTITIES = ("messages", "context", "expertise", "profiles", "polls", "sessions")
TARGET_MS = 200.0


def write_control_plane(root: Path, processes: int, days: int, busy_minutes: int, seed: int = 1) -> int:
    """The counts files and announcements of the fleet (the control plane's own writers and layout)."""
    from federation.rollout import _counts, _fleet, _io

    rnd = random.Random(seed)
    now = time.time()
    current = int(now) // _counts.HOUR * _counts.HOUR
    first = current - days * 86400
    n_bounds = len(_counts.LATENCY_BOUNDS_MS) + 1
    files = 0
    # a few templates of a minute's cells: a file is a template moved to its hour (generated compactly)
    templates = []
    for _ in range(16):
        cells = []
        for entity in ENTITIES:
            seconds = {str(off): [rnd.randint(1, 4), 1 if rnd.random() < 0.01 else 0, 0]
                       for off in rnd.sample(range(60), 8)}
            comparisons = sum(v[0] for v in seconds.values())
            latency = {}
            for side in _counts.SIDES:
                hist = [0] * n_bounds
                for _ in range(comparisons):
                    hist[min(n_bounds - 1, int(rnd.expovariate(0.6)))] += 1
                latency[side] = {"counts": hist, "sum_ms": round(comparisons * 0.4, 6)}
            cells.append((entity, {"comparisons": comparisons, "mismatches": sum(v[1] for v in seconds.values()),
                                   "errors": 0, "latency": latency, "seconds": seconds}))
        templates.append(cells)
    for p in range(processes):
        pid = 100_000 + p
        started = now - days * 86400
        for hour in range(first, current + _counts.HOUR, _counts.HOUR):
            cells = []
            # no counts after now: the current hour's minutes up to the one in progress (its seconds so far)
            past = 60 if hour < current else int(now - current) // 60 + 1
            for minute in sorted(rnd.sample(range(past), min(busy_minutes, past))):
                for entity, data in templates[rnd.randrange(len(templates))]:
                    if hour + 60 * minute + 60 > now:  # the minute in progress: its seconds before now
                        seconds = {off: c for off, c in data["seconds"].items() if hour + 60 * minute + int(off) < now}
                        if not seconds:
                            continue
                        data = {**data, "seconds": seconds, "comparisons": sum(c[0] for c in seconds.values()),
                                "mismatches": sum(c[1] for c in seconds.values())}
                    cells.append(((hour + 60 * minute, entity, 3), data))
            _counts.write_counts(_counts.counts_file(root, hour, pid, started), pid,
                                 _io.iso(datetime.fromtimestamp(started, timezone.utc)), 60, cells)
            files += 1
        doc = {"host": _io.HOST, "pid": pid, "agent": f"agent{p}", "phase": 3, "source": "flag", "sample": 1.0,
               "version": "bench", "started_at": _io.iso(datetime.fromtimestamp(started, timezone.utc)),
               "last_seen": _io.iso(datetime.now(timezone.utc))}
        _io.write_atomic(_fleet.fleet_file(root, pid), _io.dumps(doc))
    return files


def timed(fn, rounds: int) -> float:
    """The median of *rounds* calls of *fn*, in ms."""
    values = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        values.append((time.perf_counter() - t0) * 1000)
    return statistics.median(values)


def census(root: Path) -> tuple[int, float]:
    """(files, MB) under control/counts/."""
    paths = [p for p in (root / "control" / "counts").rglob("*") if p.is_file() and not p.name.startswith(".")]
    return len(paths), sum(p.stat().st_size for p in paths) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=int, default=100)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--busy-minutes", type=int, default=2, help="minutes with counts in each process-hour")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--after-only", action="store_true",
                        help="time only after the merge (before it, a busy fleet's week takes minutes a call)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-control-") as tmp:
        root = Path(tmp)
        os.environ.update({"FEDERATION_ROOT": str(root), "FEDERATION_DB": str(root / "federation.db"),
                           "FEDERATION_PHASE": "3", "FEDERATION_USE_DB": "1"})
        os.environ.pop("FEDERATION_DB_URL", None)
        from federation import config, rollout
        from federation.rollout import _counts

        config.reset()
        s = config.settings()
        t0 = time.perf_counter()
        written = write_control_plane(root, args.processes, args.days, args.busy_minutes)
        files, mb = census(root)
        print(f"control/: {args.processes} processes x {args.days} days: {written:,} counts files, {mb:.0f} MB "
              f"(written in {time.perf_counter() - t0:.0f} s)")
        now = datetime.now(timezone.utc)
        checks = {}

        def measure(label: str) -> dict[str, float]:
            # the same windows before and after (ending when the counts were written), so their numbers compare
            status = rollout.status(since=now - timedelta(hours=24), until=now, settings=s)
            week = rollout.status(since=now - timedelta(days=7), until=now, settings=s)
            checks[label] = (sum(e["comparisons"] for e in status["consistency"].values()),
                             sum(e["comparisons"] for e in week["consistency"].values()))
            return {"status 24 h": timed(lambda: rollout.status(settings=s), args.rounds),
                    "status 7 d": timed(lambda: rollout.status(since=now - timedelta(days=7), settings=s),
                                        max(1, args.rounds // 2) if label == "before" else args.rounds),
                    "floor (no counts)": timed(lambda: rollout.status(since=now + timedelta(days=1),
                                                                      until=now + timedelta(days=2), settings=s),
                                               args.rounds)}

        before = {"status 24 h": float("nan"), "status 7 d": float("nan"), "floor (no counts)": float("nan")} \
            if args.after_only else measure("before")
        t0 = time.perf_counter()
        first = _counts.maintain(root, wait=True)
        merge_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        second = _counts.maintain(root, now=time.time() + _counts.GRACE_SECONDS + 1, wait=True)
        remove_s = time.perf_counter() - t0
        after_files, after_mb = census(root)
        print(f"maintenance: {first.merged:,} files merged, {first.hours_merged} hour files into day files "
              f"in {merge_s:.1f} s; {second.removed_merged:,} merged files removed in {remove_s:.1f} s")
        print(f"kept: {after_files:,} files, {after_mb:.1f} MB (before: {files:,} files, {mb:.0f} MB)")
        after = measure("after")

    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())} ({os.cpu_count()} cores)")
    print(f"{'median ms':24} {'before':>10} {'after':>10} {'after/before':>13} {'after/floor':>12}")
    for name in before:
        ratio = after[name] / before[name] if before[name] else float("nan")
        floor = after[name] / after["floor (no counts)"]
        print(f"{name:24} {before[name]:10.1f} {after[name]:10.1f} {ratio:13.4f} {floor:12.2f}")
    verdict = "met" if after["status 24 h"] < TARGET_MS else "NOT met"
    print(f"target: status 24 h under {TARGET_MS:.0f} ms after the merge: {verdict}")
    print(f"comparisons counted (24 h, 7 d windows ending at the generation): before {checks.get('before')}, "
          f"after {checks['after']} (a window's first minute (24 h) or hour (7 d) is left out once merged: "
          "what starts before a window never counts)")


if __name__ == "__main__":
    main()
