#!/usr/bin/env python3
"""Benchmark: migration and consistency report against a bare read+parse pass, in the same run.

    python bench/bench_migrate.py [--messages 100000] [--keep DIR]

Generates a legacy tree (100,000 messages plus agents' context, expertise and
profiles, polls with votes, sessions with roles, artifacts and reviews),
then times, on the same warm files:

- bare pass: walk the tree, read and ``json.loads`` every file, nothing else;
- migration: ``federation.transfer.migrate.migrate()`` into a fresh SQLite database;
- report: ``federation.transfer.report.build_report()`` over the migrated tree.

Targets (issue 3): migration >= 20,000 files/s and >= 0.5x the bare pass's
speed; report <= 2x the bare pass's time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from federation import config  # noqa: E402
from federation.domain.generate import generate  # noqa: E402


def bare_pass(root: Path) -> int:
    """Read and parse every legacy file; the number of files."""
    n = 0
    for top in ("nodes", "shared"):
        for here, _dirs, names in os.walk(root / top):
            for name in names:
                if name.endswith(".json"):
                    with open(os.path.join(here, name), "rb") as fh:
                        json.loads(fh.read())
                    n += 1
    return n


_cpu: dict[str, float] = {}


def timed(fn, name: str = ""):
    """Wall time (what the targets are about) and, under *name*, this process's CPU time: on a
    machine shared with other work the CPU time shows what wall time hides."""
    t0, c0 = time.perf_counter(), time.process_time()
    value = fn()
    _cpu[name] = time.process_time() - c0
    return time.perf_counter() - t0, value


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--agents", type=int, default=200)
    parser.add_argument("--polls", type=int, default=500)
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it (a tree found there is reused)")
    args = parser.parse_args()

    work = args.keep or Path(tempfile.mkdtemp(prefix="bench-migrate-"))
    root, db = work / "fed", work / "federation.db"
    try:
        if root.exists():
            print(f"reusing the tree under {root}")
        else:
            # uuid-like message ids, as the federation makes them (their order is random)
            t_gen, written = timed(lambda: generate(root, agents=args.agents, messages=args.messages,
                                                    polls=args.polls, sessions=args.sessions, random_ids=True))
            print(f"generated {sum(written['rows'].values())} rows in {t_gen:.1f} s: {written['rows']}")
            os.sync()  # the generator's writes reach the disk now, not during a timed pass
        for suffix in ("", "-wal", "-shm", ".writelock"):  # always a fresh database
            Path(f"{db}{suffix}").unlink(missing_ok=True)
        bare_pass(root)  # warm the page cache, as every measured pass below finds it
        t_bare, files = timed(lambda: bare_pass(root), "bare")
        with config.override(FEDERATION_ROOT=str(root), FEDERATION_DB=str(db), FEDERATION_DB_URL=None):
            from federation.transfer.migrate import migrate
            from federation.transfer.report import build_report

            s = config.settings()
            t_mig, result = timed(lambda: migrate(settings=s), "migration")
            assert result.exit_code == 0, result.to_json()
            t_rep, report = timed(lambda: build_report(settings=s), "report")
            assert report.consistent
        rate = files / t_mig
        speed_ratio = t_bare / t_mig
        report_ratio = t_rep / t_bare
        print(f"files:            {files}")
        print(f"bare read+parse:  {t_bare:.2f} s  ({files / t_bare:,.0f} files/s)")
        print(f"migration:        {t_mig:.2f} s  ({rate:,.0f} files/s)  speed vs bare pass: {speed_ratio:.2f}x  "
              f"[target >= 20,000 files/s and >= 0.5x: {'ok' if rate >= 20_000 and speed_ratio >= 0.5 else 'MISSED'}]")
        print(f"report:           {t_rep:.2f} s  time vs bare pass: {report_ratio:.2f}x  "
              f"[target <= 2x: {'ok' if report_ratio <= 2 else 'MISSED'}]")
        print(f"CPU time (this process): bare {_cpu['bare']:.2f} s, migration {_cpu['migration']:.2f} s "
              f"(speed {_cpu['bare'] / _cpu['migration']:.2f}x), report {_cpu['report']:.2f} s "
              f"({_cpu['report'] / _cpu['bare']:.2f}x); load average {os.getloadavg()[0]:.1f} on "
              f"{os.cpu_count()} CPUs")
        return 0
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
