"""Delivery with leases and acks (issue 19): receive+ack against check_inbox, and pulse(wait) wake-up.

- throughput: N waiting messages drained by one check_inbox() (claim = read), against one
  receive() then one ack() of every id, in the same run; then one message at a time (send, then
  take it), where receive+ack costs two calls against one.  Target: receive+ack >= 0.5x check_inbox.
- wake-up: a process in pulse(lease=60, wait=10) per tick; the parent sends a message at a random
  moment; the latency is from just before send_message() is called to pulse() returning with it.
  Target p50 <= 100 ms.

Phase 4 on SQLite and PostgreSQL (a throwaway server unless --pg-url; fsync off, so its write figures
flatter it), and phase 1 (files) for reference.

    python bench/bench_delivery.py [--messages 2000] [--singles 200] [--wakeups 20] [--rounds 3] [--pg-url URL] [--no-pg]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import random
import statistics
import sys
import time
from pathlib import Path

from _common import federation_env, postgres_url

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


def _fill(n: int) -> None:
    from federation import messaging

    for i in range(n):
        messaging.send_message("alice", "bob", f"m{i}")


def bulk(n: int) -> tuple[float, float]:
    """(check_inbox msgs/s, receive+ack msgs/s) for n waiting messages."""
    from federation import messaging

    _fill(n)
    t0 = time.perf_counter()
    got = messaging.check_inbox("bob")
    claim = time.perf_counter() - t0
    assert len(got) == n
    _fill(n)
    t0 = time.perf_counter()
    got = messaging.receive("bob", lease=60)
    acked = messaging.ack("bob", [m["id"] for m in got])
    lease = time.perf_counter() - t0
    assert len(acked) == n
    return n / claim, n / lease


def singles(n: int) -> tuple[float, float]:
    """(check_inbox msgs/s, receive+ack msgs/s) taking one message at a time (the send not timed)."""
    from federation import messaging

    claim = lease = 0.0
    for i in range(n):
        messaging.send_message("alice", "bob", "one")
        t0 = time.perf_counter()
        assert len(messaging.check_inbox("bob")) == 1
        claim += time.perf_counter() - t0
        messaging.send_message("alice", "bob", "one")
        t0 = time.perf_counter()
        got = messaging.receive("bob", lease=60)
        assert len(messaging.ack("bob", [m["id"] for m in got])) == 1
        lease += time.perf_counter() - t0
    return n / claim, n / lease


def _waiter(k: int, queue) -> None:
    from federation import messaging
    from federation.stores.sqlstore import forget_stores

    forget_stores()
    done: list[str] = []
    seen = 0
    queue.put("ready")
    while seen < k:
        tick = messaging.pulse("bob", lease=60, ack=done, wait=10)
        now = time.time()
        done = [m["id"] for m in tick["messages"]]
        for m in tick["messages"]:
            queue.put(now - float(m["content"]))
            seen += 1
    messaging.ack("bob", done)


def wakeups(k: int) -> list[float]:
    """Wake-up latencies (seconds) of k sends to an agent waiting in pulse(wait)."""
    from federation import messaging

    queue = mp.get_context("fork").Queue()
    proc = mp.get_context("fork").Process(target=_waiter, args=(k, queue))
    proc.start()
    assert queue.get(timeout=60) == "ready"
    time.sleep(0.5)
    out = []
    for _ in range(k):
        time.sleep(random.uniform(0.15, 0.35))  # the waiter is asleep in pulse(wait) by now
        messaging.send_message("alice", "bob", repr(time.time()))
        out.append(queue.get(timeout=30))
    proc.join(30)
    return out


def run(label: str, phase: int, url: str | None, args) -> None:
    with federation_env(phase, url):
        from federation import messaging

        messaging.send_message("alice", "bob", "warm-up")
        messaging.check_inbox("bob")
        rounds = [bulk(args.messages) for _ in range(args.rounds)]  # the best of each, as bench_inbox does
        claim, lease = max(r[0] for r in rounds), max(r[1] for r in rounds)
        one_claim, one_lease = singles(args.singles)
        lat = sorted(wakeups(args.wakeups)) if args.wakeups else []
    p50 = statistics.median(lat) * 1000 if lat else float("nan")
    p90 = lat[int(len(lat) * 0.9) - 1] * 1000 if lat else float("nan")
    print(f"  {label:22} {claim:>9.0f} {lease:>9.0f} {lease / claim:>6.2f}x   {one_claim:>7.0f} {one_lease:>7.0f} "
          f"{one_lease / one_claim:>6.2f}x   {p50:>7.1f} {p90:>7.1f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=2000, help="waiting messages drained at once")
    ap.add_argument("--singles", type=int, default=200, help="messages taken one at a time")
    ap.add_argument("--wakeups", type=int, default=20, help="pulse(wait) wake-ups measured")
    ap.add_argument("--rounds", type=int, default=3, help="bulk rounds; the best of each is reported")
    ap.add_argument("--pg-url", help="PostgreSQL database to use (default: a throwaway server)")
    ap.add_argument("--no-pg", action="store_true")
    args = ap.parse_args()
    print(f"bulk: {args.messages} waiting messages, msgs/s; one at a time: {args.singles} messages, msgs/s; "
          f"wake-up: {args.wakeups} sends, ms")
    print(f"  {'store':22} {'check':>9} {'recv+ack':>9} {'ratio':>7}   {'check':>7} {'r+a':>7} {'ratio':>7}   "
          f"{'p50':>7} {'p90':>7}")
    run("phase 1 (files)", 1, None, args)
    run("phase 4 SQLite", 4, None, args)
    if args.no_pg:
        return
    with postgres_url(args.pg_url) as url:
        run("phase 4 PostgreSQL", 4, url, args)


if __name__ == "__main__":
    main()
