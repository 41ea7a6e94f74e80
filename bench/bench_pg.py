"""SQLite and PostgreSQL side by side: the vote and the inbox benchmarks in one run.

- votes: 8 processes x 200 votes on one poll, phase 4 (SQL only), votes/s and votes kept;
- inbox: one check_inbox() claiming 10,000 messages, phase 4, against the legacy
  file path (phase 1: glob, read, delete).

The measurements are those of bench_votes.py and bench_inbox.py; this script
runs them on both engines against one server and prints them side by side.

The PostgreSQL server is --pg-url (an empty database the benchmark may fill;
tables are dropped first) or, without it, a throwaway server started for the run
(tests/pgserver.py: fsync off, so its write figures flatter PostgreSQL against a durable server).

    python bench/bench_pg.py [--pg-url URL] [--procs 8] [--votes 200] [--messages 10000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from _common import best_of, postgres_url

import bench_inbox
import bench_votes

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


def reset_pg(url: str) -> None:
    import psycopg

    from federation.stores.schema import TABLES

    with psycopg.connect(url, autocommit=True) as conn:
        for table in (*TABLES, "federation_meta", "schema_version"):
            conn.execute(f"DROP TABLE IF EXISTS {table} CASCADE")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pg-url", help="PostgreSQL database to use (default: a throwaway server)")
    ap.add_argument("--procs", type=int, default=8)
    ap.add_argument("--votes", type=int, default=200, help="votes per process")
    ap.add_argument("--messages", type=int, default=10000)
    ap.add_argument("--rounds", type=int, default=3, help="inbox rounds; the best is reported")
    args = ap.parse_args()

    with postgres_url(args.pg_url) as url:
        total = args.procs * args.votes
        print(f"votes: {args.procs} processes x {args.votes} votes = {total} on one poll, phase 4")
        print(f"  {'engine':12} {'seconds':>8} {'votes/s':>9} {'kept':>6}")
        rates = {}
        for engine, db_url in (("SQLite", None), ("PostgreSQL", url)):
            if db_url:
                reset_pg(db_url)
            seconds, kept = bench_votes.measure(engine, 4, args.procs, args.votes, db_url)
            rates[engine] = total / seconds
            print(f"  {engine:12} {seconds:8.3f} {total / seconds:9.0f} {kept:6d}")
        ratio = rates["PostgreSQL"] / rates["SQLite"]
        print(f"  PostgreSQL / SQLite votes/s: {ratio:.2f}x (target >= 0.5x: {'met' if ratio >= 0.5 else 'MISSED'}; "
              "a vote is one statement, one round trip)")

        print(f"inbox: one check_inbox() of {args.messages} messages (best of {args.rounds})")
        legacy = best_of(args.rounds, lambda: bench_inbox.one_round(1, args.messages))
        print(f"  {'files (ph. 1)':12} {legacy * 1000:8.1f} ms")
        for engine, db_url in (("SQLite", None), ("PostgreSQL", url)):

            def one() -> float:
                if db_url:
                    reset_pg(db_url)
                return bench_inbox.one_round(4, args.messages, db_url)

            seconds = best_of(args.rounds, one)
            print(f"  {engine:12} {seconds * 1000:8.1f} ms   {legacy / seconds:5.1f}x faster than phase 1")


if __name__ == "__main__":
    main()
