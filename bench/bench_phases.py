"""Cost of each operation in phases 2, 3 and 4 against the legacy file path alone (phase 1),
and the cost of the installed-but-off shim (FEDERATION_USE_DB=0) against the undecorated functions.

    python bench/bench_phases.py [--n 2000]

Ratios are per-operation means measured in this run, on the same machine, best of 3 rounds.
"""

from __future__ import annotations

import argparse
import time

from _common import federation_env


def workload(n: int):
    """(name, setup, op) triples; op(i) runs one operation."""
    from federation import context, governance, messaging

    def votes():
        pid = governance.create_poll("lead", "Bench?", ["yes", "no"])
        for k in range(50):  # a poll that already has some votes, as in real use
            governance.vote(pid, f"seed-{k}", "yes")
        return lambda i: governance.vote(pid, f"voter-{i}", "no" if i % 2 else "yes")

    def sends():
        return lambda i: messaging.send_message("alice", "bob", f"message {i}")

    def checks():
        return lambda i: (messaging.send_message("alice", "carol", "ping"), messaging.check_inbox("carol"))

    def contexts():
        return lambda i: context.set_context("bob", f"working on {i}")

    def heartbeats():
        return lambda i: context.heartbeat("bob")

    def reads():
        pid = governance.create_poll("lead", "Read?", ["yes", "no"])
        for k in range(50):
            governance.vote(pid, f"seed-{k}", "yes")
        return lambda i: governance.get_poll(pid)

    def context_reads():
        context.set_context("dave", "x" * 500)
        return lambda i: context.get_context("dave")

    return [("vote", votes), ("send_message", sends), ("send+check_inbox", checks), ("set_context", contexts),
            ("heartbeat", heartbeats), ("get_poll", reads), ("get_context", context_reads)]


def time_op(phase: int, name_setup, n: int, sample: str = "1.0") -> float:
    import os

    from federation import config

    name, setup = name_setup
    with federation_env(phase):
        os.environ["FEDERATION_SHADOW_SAMPLE"] = sample
        config.reset()
        op = setup()
        for i in range(50):  # warm up: connections, schema, page cache
            op(-i - 1)
        t0 = time.perf_counter()
        for i in range(n):
            op(i)
        return (time.perf_counter() - t0) / n


def shim_off_overhead(n: int) -> tuple[float, float]:
    """Mean seconds per call of a wrapped vs the original save_context, with FEDERATION_USE_DB=0."""
    import shim
    from federation import _clock, core

    with federation_env(1):
        original = shim.installed(core).originals["save_context"]
        wrapped = core.save_context
        stamp = _clock.now()
        best_w = best_o = float("inf")
        for _ in range(5):  # interleaved rounds, best of each
            t0 = time.perf_counter()
            for i in range(n):
                original("bob", "x", stamp)
            best_o = min(best_o, (time.perf_counter() - t0) / n)
            t0 = time.perf_counter()
            for i in range(n):
                wrapped("bob", "x", stamp)
            best_w = min(best_w, (time.perf_counter() - t0) / n)
    return best_w, best_o


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000, help="operations per measurement")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the best of each is kept")
    ap.add_argument("--sample", default="0.1", help="a second FEDERATION_SHADOW_SAMPLE to measure reads at")
    args = ap.parse_args()
    print(f"{'operation':18} {'phase1 us':>10} {'phase2 us':>10} {'phase3 us':>10} {'phase4 us':>10} "
          f"{'p2/p1':>6} {'p3/p1':>6} {'p4/p1':>6}")
    worst = {"1.0": 0.0, args.sample: 0.0}
    for sample in worst:
        if sample != "1.0":
            print(f"-- reads again with FEDERATION_SHADOW_SAMPLE={sample}")
        for item in workload(args.n):
            if sample != "1.0" and not item[0].startswith("get_"):
                continue
            cost = {p: float("inf") for p in (1, 2, 3, 4)}
            for _ in range(args.rounds):  # phases interleaved, so they share the machine's noise
                for p in cost:
                    cost[p] = min(cost[p], time_op(p, item, args.n, sample))
            r2, r3, r4 = cost[2] / cost[1], cost[3] / cost[1], cost[4] / cost[1]
            worst[sample] = max(worst[sample], r2, r3)
            print(f"{item[0]:18} {cost[1] * 1e6:10.1f} {cost[2] * 1e6:10.1f} {cost[3] * 1e6:10.1f} "
                  f"{cost[4] * 1e6:10.1f} {r2:6.2f} {r3:6.2f} {r4:6.2f}")
    print(f"worst phase 2/3 ratio against the legacy file path: {worst['1.0']:.2f}x "
          f"(reads at sample {args.sample}: {worst[args.sample]:.2f}x)")
    w, o = shim_off_overhead(args.n * 2)
    print(f"FEDERATION_USE_DB=0: wrapped {w * 1e6:.2f} us, undecorated {o * 1e6:.2f} us, ratio {w / o:.3f}x")


if __name__ == "__main__":
    main()
