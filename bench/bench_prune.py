"""`federation prune` of 1,000,000 read messages: rows/s, and what an agent feels meanwhile.

    python bench/bench_prune.py [--messages 1000000] [--agents 3] [--interval 0.02] [--batch-size 2000] [--pg-url URL]

Phase 4 (database only).  The database is filled (untimed) with --messages
read messages and as many history entries, all older than the cutoff, plus
unread and recent rows that must stay.  Then, in the same run:

1. baseline: --agents processes tick send_message + check_inbox every --interval
   seconds for --seconds with no prune running; p50/p99 of each call (a send counted
   from when its tick was due);
2. the same agents while `prune` removes the old rows; prune's rows/s, and
   the agents' p50/p99 beside the baseline (ratios).

The counts are checked: every old read row gone, every other row kept.
"""

from __future__ import annotations

from federation import config

import argparse
import multiprocessing as mp
import statistics
import time

from _common import federation_env

OLD = "2020-01-01T00:00:00.000000+00:00"


def fill(messages: int, chunk: int = 50_000) -> int:
    """Bulk-insert the old read messages and history (plus unread/recent rows that must stay); the kept count."""
    from federation.domain.clock import new_id, now
    from federation.stores.sqlstore import get_store

    store = get_store(config.settings())
    store.db.ensure_schema()
    recent = now()
    kept = 0
    for start in range(0, messages, chunk):
        n = min(chunk, messages - start)
        rows = [(new_id(), f"user{i % 100}", "sender", "content of a message that was read long ago", "task",
                 None, OLD, OLD) for i in range(n)]
        extra = [(new_id(), f"user{i % 100}", "sender", "unread or recent", "task", None, OLD,
                  None if i % 2 else recent) for i in range(n // 100)]  # 1 % that must stay
        kept += len(extra)
        history = [("sent", "sender", f"user{i % 100}", "content", "task", OLD, new_id()) for i in range(n)]
        store.db.write(lambda tx: tx.executemany(
            "INSERT INTO messages (id, recipient, sender, content, message_type, reply_to, timestamp, read_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows + extra))
        store.db.write(lambda tx: tx.executemany(
            "INSERT INTO message_history (direction, sender, recipient, content, message_type, timestamp, "
            "message_id) VALUES (?, ?, ?, ?, ?, ?, ?)", history))
    return kept


def agent(i: int, interval: float, stop, out) -> None:
    """Send to oneself and check the inbox every *interval* seconds until *stop*; latencies in ms per call.

    A tick is due every *interval* from the start, as an agent ticks: a call held up delays the ticks
    behind it, and each of those counts from when it was due (a stall is sampled as often as an agent
    would meet it).  Without pacing (*interval* 0) an agent stalled behind a batch makes one slow call
    where it makes many fast ones between batches: its p99 hides the stalls (coordinated omission).
    """
    from federation import messaging
    from federation.stores.sqlstore import forget_stores

    forget_stores()  # never the parent's connections
    me = f"bench-agent-{i}"
    send, check = [], []
    due = time.perf_counter()
    while not stop.is_set():
        if interval:
            time.sleep(max(0.0, due - time.perf_counter()))
        t0 = time.perf_counter()
        start = min(due, t0) if interval else t0
        messaging.send_message(me, me, "ping")
        t1 = time.perf_counter()
        messaging.check_inbox(me)
        t2 = time.perf_counter()
        send.append((t1 - start) * 1000)
        check.append((t2 - t1) * 1000)
        due += interval
    out.put((send, check))


def run_agents(n: int, during, interval: float = 0.0) -> tuple[list[float], list[float], object]:
    ctx = mp.get_context("fork")
    stop, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=agent, args=(i, interval, stop, out)) for i in range(n)]
    for p in procs:
        p.start()
    time.sleep(0.5)  # the agents are connected and working
    result = during()
    stop.set()
    send, check = [], []
    for _ in procs:
        s, c = out.get()
        send += s
        check += c
    for p in procs:
        p.join()
    return send, check, result


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=1_000_000)
    ap.add_argument("--agents", type=int, default=3)
    ap.add_argument("--interval", type=float, default=0.02,
                    help="seconds between an agent's ticks (0: back to back, which hides stalls)")
    ap.add_argument("--batch-size", type=int, default=2000)
    ap.add_argument("--seconds", type=float, default=5.0, help="length of the baseline run")
    ap.add_argument("--pg-url", help="a PostgreSQL database URL (default: SQLite in a temp folder)")
    args = ap.parse_args()

    with federation_env(4, args.pg_url):
        from federation.operations.prune import prune
        from federation.stores.sqlstore import get_store

        t0 = time.perf_counter()
        kept = fill(args.messages)
        print(f"filled {args.messages:,} read messages + {args.messages:,} history entries "
              f"(+{kept:,} to keep) in {time.perf_counter() - t0:.1f} s")
        base_send, base_check, _ = run_agents(args.agents, lambda: time.sleep(args.seconds), args.interval)
        run_send, run_check, result = run_agents(args.agents, lambda: prune("30d", batch_size=args.batch_size, settings=config.settings()),
                                                 args.interval)
        counts = get_store(config.settings()).counts()

    removed = sum(result.removed.values())
    assert result.removed["messages"] == args.messages, result.removed
    assert result.removed["message_history"] == args.messages, result.removed
    engine = "PostgreSQL" if args.pg_url else "SQLite"
    print(f"{engine}: prune removed {removed:,} rows ({result.removed}) in {result.seconds:.2f} s: "
          f"{removed / result.seconds:,.0f} rows/s, {result.batches} batches; rows left: messages "
          f"{counts['messages']:,} (agents' + {kept:,} kept)")
    print(f"{'call':<14}{'calls':>8}{'p50 ms':>10}{'p99 ms':>10}   (baseline: no prune running)")
    for name, base, run in (("send_message", base_send, run_send), ("check_inbox", base_check, run_check)):
        print(f"{name:<14}{len(base):>8}{pct(base, .5):>10.2f}{pct(base, .99):>10.2f}   baseline")
        print(f"{'':<14}{len(run):>8}{pct(run, .5):>10.2f}{pct(run, .99):>10.2f}   during prune: p99 "
              f"{pct(run, .99) / pct(base, .99):.2f}x the baseline, p50 {pct(run, .5) / pct(base, .5):.2f}x")
    if run_send:
        print(f"mean send during prune {statistics.fmean(run_send):.2f} ms over {len(run_send)} calls")


if __name__ == "__main__":
    main()
