"""What the fleet's announcements cost at --processes processes (default 1,000), before and after issue 29.

Each process rewrites its announcement in ``control/fleet/`` every
FEDERATION_FLEET_REFRESH seconds and reads the whole fleet (one file per
process) to look for an unsafe phase mix.  This measures, on this machine's
disk and in the same run, one announcement's write and one read of a fleet of
--processes announcements (the real code: ``_io.write_atomic`` and
``_fleet.read_fleet``), then prices two schedules for the whole fleet:

- before: announce every 5 s, gone after 30 s, read the fleet at every announcement;
- after:  announce every 2 s, gone after 9 s (a dead process on any host known
  within 10 s), read the fleet every 10 announcements.

    python bench/bench_announce.py [--processes 1000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import _common  # noqa: F401 - puts the project on the path

from federation.rollout import _fleet, _io

SCHEDULES = {  # name: (refresh s, timeout s, announcements between two fleet reads)
    "before": (5.0, 30.0, 1),
    "after": (2.0, 9.0, 10),
}


def announcement(pid: int) -> bytes:
    now = _io.iso(_io.utcnow())
    return _io.dumps({"host": "bench-host", "pid": pid, "agent": f"agent-{pid}", "phase": 3, "source": "flag",
                      "sample": 1.0, "version": "0", "started_at": now, "last_seen": now, "proc_start": pid})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="fedbench-fleet-"))
    n = args.processes
    writes, reads = [], []
    for _ in range(args.rounds):  # interleaved: each round writes every announcement, then reads the fleet
        for pid in range(1, n + 1):
            t0 = time.perf_counter()
            _io.write_atomic(_fleet.fleet_file(root, pid), announcement(pid))
            writes.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        fleet = _fleet.read_fleet(root, 9.0)
        reads.append(time.perf_counter() - t0)
        assert len(fleet) == n, len(fleet)
    write_s, read_s = statistics.median(writes), statistics.median(reads)
    print(f"{n} processes; load average {os.getloadavg()[0]:.2f}; one announcement written in "
          f"{write_s * 1e3:.3f} ms, the fleet read in {read_s * 1e3:.1f} ms (medians of {args.rounds} rounds)")
    print(f"{'schedule':8} {'refresh':>8} {'gone after':>10} {'writes/s':>9} {'files read/s':>13} "
          f"{'fleet CPU s/s':>14} {'per process':>12}")
    cost = {}
    for name, (refresh, timeout, every) in SCHEDULES.items():
        writes_per_s = n / refresh
        fleet_reads_per_s = n / (refresh * every)
        cpu = writes_per_s * write_s + fleet_reads_per_s * read_s  # seconds of work per second, fleet-wide
        cost[name] = cpu
        print(f"{name:8} {refresh:>7.0f}s {timeout:>9.0f}s {writes_per_s:>9.0f} {fleet_reads_per_s * n:>13.0f} "
              f"{cpu:>14.2f} {cpu / n * 1e3:>10.2f}ms")
    print(f"after / before: {cost['after'] / cost['before']:.2f}x the fleet's announcement work, "
          f"a dead process known in {SCHEDULES['after'][1] + 1:.0f} s instead of {SCHEDULES['before'][1] + 5:.0f} s")


if __name__ == "__main__":
    main()
