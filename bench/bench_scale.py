"""Per-tick operations on an empty database and on a large one: cost must follow the answer, not the database.

For each engine (SQLite, and PostgreSQL on a throwaway server or --pg-url),
phase 4, the same small federation (20 agents with context, expertise and a
profile; one open poll; a few sessions) is measured twice: as it is ("empty"),
and after bulk-loading --messages read messages (and as many history
entries), --polls closed polls with --votes-per-poll votes each and --sessions
sessions ("large"; default 1M messages, 10k polls, 500k votes).  Each
operation runs --calls times; the median is reported, and the ratio
large/empty, which must stay within 2x for every per-tick operation.

    python bench/bench_scale.py [--messages 1000000] [--polls 10000] [--votes-per-poll 50]
                                [--sessions 1000] [--calls 200] [--engines sqlite postgresql] [--pg-url URL]
"""

from __future__ import annotations

from federation import config

import argparse
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Callable

from _common import federation_env, postgres_url

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

AGENTS = [f"agent-{i:02d}" for i in range(20)]
ME, PEER = AGENTS[0], AGENTS[1]


def seed_small() -> tuple[str, str, str]:
    """The federation both measurements share: (its one open poll, the first of 11 closed polls, its first session).

    Every answer measured is the same size on the empty and the large database:
    pages start after a poll / session created here, later than the bulk rows.
    """
    from federation import context, governance, messaging

    for i in range(120):  # a history and receipts newer than any bulk row: every page of 100 is full
        messaging.send_message(ME, PEER, f"seeded {i}")
        messaging.send_message(PEER, ME, f"seeded reply {i}")
    messaging.check_inbox(ME)
    messaging.check_inbox(PEER)
    for i, agent in enumerate(AGENTS):
        context.set_context(agent, f"working on task {i}")
        context.set_expertise(agent, ["sql" if i % 2 else "python", "ops"])
        context.set_profile(agent, default_role="reviewer" if i % 4 == 0 else "implementer")
    sessions = []
    for i in range(5):
        sessions.append(governance.create_session(PEER, f"session {i}"))
        governance.assign_role(sessions[-1], ME, "reviewer", f"part {i}")
    closed = []
    for i in range(11):
        closed.append(governance.create_poll(PEER, f"Done {i}?", ["yes", "no"]))
        governance.vote(closed[-1], PEER, "yes")
        governance.close_poll(closed[-1], PEER)
    return governance.create_poll(PEER, "Ship it?", ["yes", "no"]), closed[0], sessions[0]


def bulk_load(messages: int, polls: int, votes_per_poll: int, sessions: int) -> None:
    """Rows straight into the tables (as a months-old federation would have them), in large batches."""
    from federation.stores.sqlstore import get_store

    db = get_store(config.settings()).db
    stamp = "2025-01-01T00:00:00.000000+00:00"
    batch = 20_000

    def insert(sql: str, rows) -> None:
        buffer = []
        for row in rows:
            buffer.append(row)
            if len(buffer) >= batch:
                db.write(lambda tx, chunk=buffer: tx.executemany(sql, chunk))
                buffer = []
        if buffer:
            db.write(lambda tx, chunk=buffer: tx.executemany(sql, chunk))

    def message_rows():
        for i in range(messages):
            sender, recipient = AGENTS[i % 20], AGENTS[(i * 7 + 3) % 20]
            ts = f"2025-01-{1 + i % 28:02d}T{i % 24:02d}:00:{i % 60:02d}.{i % 1_000_000:06d}+00:00"
            yield (uuid.uuid4().hex, sender, recipient, f"old message {i}", "task", None, ts, ts)

    insert("INSERT INTO messages (id, sender, recipient, content, message_type, reply_to, timestamp, read_at) "
           "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", message_rows())
    insert("INSERT INTO message_history (direction, sender, recipient, content, message_type, timestamp, message_id) "
           "VALUES ('sent', ?, ?, ?, ?, ?, ?)", ((AGENTS[i % 20], AGENTS[(i * 7 + 3) % 20], f"old message {i}", "task",
                                                  stamp, uuid.uuid4().hex) for i in range(messages)))
    poll_ids = [f"oldpoll{i:07d}" for i in range(polls)]
    insert("INSERT INTO polls (id, question, options, status, creator, created_at) VALUES (?, ?, ?, 'closed', ?, ?)",
           ((pid, f"old question {i}?", '["yes", "no"]', AGENTS[i % 20], stamp) for i, pid in enumerate(poll_ids)))
    insert("INSERT INTO votes (poll_id, voter, option, voted_at) VALUES (?, ?, ?, ?)",
           ((pid, f"voter-{j}", "yes" if j % 2 else "no", stamp) for pid in poll_ids for j in range(votes_per_poll)))
    session_ids = [f"oldsession{i:06d}" for i in range(sessions)]
    insert("INSERT INTO sessions (id, title, lead, phase, created_at, updated_at) VALUES (?, ?, ?, 'done', ?, ?)",
           ((sid, f"old session {i}", AGENTS[i % 20], stamp, stamp) for i, sid in enumerate(session_ids)))
    insert("INSERT INTO session_roles (session_id, agent, role, assigned_at) VALUES (?, ?, 'dev', ?)",
           ((sid, AGENTS[(i + k) % 20], stamp) for i, sid in enumerate(session_ids) for k in range(3)))
    db.execute("ANALYZE")  # fresh statistics, as autovacuum / a long-lived database would have


def measure(calls: int, poll_id: str, first_closed: str, first_session: str) -> dict[str, float]:
    """Median seconds of each per-tick operation."""
    from federation import context, governance, messaging

    counter = iter(range(10**9))

    def check_inbox_of_5() -> Callable[[], None]:
        for i in range(5):
            messaging.send_message(PEER, ME, f"tick {i}")
        return lambda: messaging.check_inbox(ME)

    def pulse_prepared() -> Callable[[], None]:
        for i in range(5):
            messaging.send_message(PEER, ME, f"tick {i}")
        return lambda: messaging.pulse(ME)

    ops: dict[str, Callable[[], Callable[[], object]]] = {
        "send_message": lambda: lambda: messaging.send_message(ME, PEER, "hello"),
        "check_inbox (5 unread)": check_inbox_of_5,
        "vote": lambda: (lambda voter=f"v{next(counter)}": governance.vote(poll_id, voter, "yes")),
        "set_context": lambda: lambda: context.set_context(ME, "busy"),
        "pulse (5 unread)": pulse_prepared,
        'list_polls("open")': lambda: lambda: governance.list_polls("open"),
        "list_polls(limit=10, after)": lambda: lambda: governance.list_polls(limit=10, after=first_closed),
        "list_sessions(100, after)": lambda: lambda: governance.list_sessions(limit=100, after=first_session),
        "get_history(100)": lambda: lambda: messaging.get_history(ME, 100),
        "get_sent(100)": lambda: lambda: messaging.get_sent(ME, 100),
        "list_agents": lambda: lambda: context.list_agents(),
        "find_experts": lambda: lambda: context.find_experts("sql"),
        "broadcast (role)": lambda: lambda: messaging.broadcast(ME, "stand-up", role="reviewer"),
    }
    out = {}
    for name, prepare in ops.items():
        samples = []
        for _ in range(calls):
            op = prepare()
            t0 = time.perf_counter()
            op()
            samples.append(time.perf_counter() - t0)
        messaging.check_inbox(ME)
        out[name] = statistics.median(samples)
    return out


def run_engine(engine: str, url: str | None, args: argparse.Namespace) -> dict[str, tuple[float, float]]:
    results = {}
    for size in ("empty", "large"):
        if url:
            from bench_pg import reset_pg

            reset_pg(url)
        with federation_env(4, url):
            seeded = seed_small()
            if size == "large":
                t0 = time.perf_counter()
                bulk_load(args.messages, args.polls, args.votes_per_poll, args.sessions)
                print(f"  {engine}: loaded {args.messages:,} messages, {args.polls:,} polls, "
                      f"{args.polls * args.votes_per_poll:,} votes in {time.perf_counter() - t0:.1f} s",
                      file=sys.stderr)
            results[size] = measure(args.calls, *seeded)
    return {op: (results["empty"][op], results["large"][op]) for op in results["empty"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=1_000_000)
    ap.add_argument("--polls", type=int, default=10_000)
    ap.add_argument("--votes-per-poll", type=int, default=50)
    ap.add_argument("--sessions", type=int, default=1_000)
    ap.add_argument("--calls", type=int, default=200, help="timed calls of each operation (the median is reported)")
    ap.add_argument("--engines", nargs="+", default=["sqlite", "postgresql"], choices=["sqlite", "postgresql"])
    ap.add_argument("--pg-url", help="PostgreSQL database to use (default: a throwaway server; tables are dropped)")
    args = ap.parse_args()
    from federation._logging import configure

    configure()  # the library's events go to stderr, not into the table

    failed = []
    with postgres_url(args.pg_url, needed="postgresql" in args.engines) as url:
        print(f"phase 4; large = {args.messages:,} messages, {args.polls:,} polls, "
              f"{args.polls * args.votes_per_poll:,} votes, {args.sessions:,} sessions; median of {args.calls} calls")
        for engine in args.engines:
            rows = run_engine(engine, url if engine == "postgresql" else None, args)
            print(f"{engine}:")
            print(f"  {'operation':26} {'empty µs':>10} {'large µs':>10} {'ratio':>7}")
            for op, (empty, large) in rows.items():
                ratio = large / empty
                mark = "" if ratio <= 2.0 else "  > 2x"
                if ratio > 2.0:
                    failed.append(f"{engine} {op}")
                print(f"  {op:26} {empty * 1e6:10.0f} {large * 1e6:10.0f} {ratio:6.2f}x{mark}")
    print("target every per-tick operation within 2x of its empty-database time: "
          + ("met" if not failed else "MISSED: " + ", ".join(failed)))


if __name__ == "__main__":
    main()
