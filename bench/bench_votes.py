"""Votes by 8 processes on one poll: phase 4 (SQL) against the legacy file path.

Prints votes/s for: phase 4; the legacy file path with its lock (phase 1);
the legacy read-modify-write without a lock (what deployments run today),
with the votes it lost; and the ratios, all measured in this run.

    python bench/bench_votes.py [--procs 8] [--votes 200]
"""

from __future__ import annotations

import argparse
import json
import os

from _common import federation_env, run_processes


def cast(phase_label: str, poll_id: str, procs: int, votes: int) -> float:
    from federation import core, governance

    def worker(i: int) -> None:
        if phase_label == "unlocked":
            # today's legacy code: read polls.json, modify, write, no lock
            path = core.tree().polls_file
            for j in range(votes):
                polls = json.loads(path.read_text())
                polls[poll_id]["votes"][f"voter-{i}-{j}"] = "yes"
                tmp = path.with_suffix(f".{os.getpid()}.tmp")
                tmp.write_text(json.dumps(polls))
                os.replace(tmp, path)
        else:
            for j in range(votes):
                governance.vote(poll_id, f"voter-{i}-{j}", "yes")

    return run_processes(procs, worker)


def measure(label: str, phase: int, procs: int, votes: int, db_url: str | None = None) -> tuple[float, int]:
    from federation import governance

    with federation_env(phase, db_url):
        poll_id = governance.create_poll("bench", "Ship it?", ["yes", "no"])
        seconds = cast(label, poll_id, procs, votes)
        kept = len(governance.get_poll(poll_id)["votes"])
    return seconds, kept


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--procs", type=int, default=8)
    ap.add_argument("--votes", type=int, default=200, help="votes per process")
    ap.add_argument("--pg-url", default=os.environ.get("FEDERATION_BENCH_PG_URL"),
                    help="also run phase 4 on this PostgreSQL database")
    args = ap.parse_args()
    total = args.procs * args.votes
    rows = []
    for label, phase, url in [("phase 4 (SQLite)", 4, None), ("legacy, locked (phase 1)", 1, None),
                              ("unlocked", 1, None)] + ([("phase 4 (PostgreSQL)", 4, args.pg_url)]
                                                        if args.pg_url else []):
        seconds, kept = measure(label, phase, args.procs, args.votes, url)
        rows.append((label, seconds, kept))
    print(f"{args.procs} processes x {args.votes} votes = {total} votes on one poll")
    print(f"{'path':32} {'seconds':>8} {'votes/s':>10} {'kept':>6} {'lost':>6}")
    for label, seconds, kept in rows:
        name = "legacy, no lock (today)" if label == "unlocked" else label
        print(f"{name:32} {seconds:8.3f} {total / seconds:10.0f} {kept:6d} {total - kept:6d}")
    sql, locked = rows[0][1], rows[1][1]
    print(f"ratio phase 4 / legacy locked: {locked / sql:.1f}x faster")
    if args.pg_url:
        print(f"ratio PostgreSQL / legacy locked: {locked / rows[3][1]:.1f}x faster")


if __name__ == "__main__":
    main()
