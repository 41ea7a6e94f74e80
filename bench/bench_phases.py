"""Cost of each operation in phases 2, 3 and 4 against the legacy file path alone (phase 1),
and the cost of the installed-but-off shim (FEDERATION_USE_DB=0) against the undecorated functions;
then the cost of the rollout control plane (the live flag and the counters) per operation and phase.

    python bench/bench_phases.py [--n 2000] [--skip-phases] [--skip-control]

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


def control(on: bool) -> None:
    """Install the shim with the control plane (phase from env pin > live flag > 3, counters) or
    without it (the phase from the environment only, nothing counted: the figures before it)."""
    import shim
    from federation import _wiring, core

    shim.uninstall(core)
    shim.install(core, **_wiring.hooks(control=on))


def follow_flag(root, phase: int) -> None:
    """Unpin this process and set the live flag of *root* to *phase*."""
    import os

    from federation import config
    from federation.rollout import _flag, _io

    for var in ("FEDERATION_USE_DB", "FEDERATION_PHASE"):
        os.environ.pop(var, None)
    _flag.write_flag(root, _flag.Flag(phase=phase, sample=1.0, set_at=_io.iso(_io.utcnow()), set_by="bench"))
    config.reset()


def time_op(phase: int, name_setup, n: int, sample: str = "1.0", variant: str = "today") -> float:
    """Mean seconds of one operation; variant: "today" (no control plane), "pinned" (control plane,
    phase pinned by the environment) or "flag" (control plane, phase from the live flag)."""
    import os

    from federation import config

    name, setup = name_setup
    control(variant != "today")
    with federation_env(phase) as root:
        os.environ["FEDERATION_SHADOW_SAMPLE"] = sample
        if variant == "flag":
            follow_flag(root, phase)
        config.reset()
        op = setup()
        for i in range(50):  # warm up: connections, schema, page cache
            op(-i - 1)
        t0 = time.perf_counter()
        for i in range(n):
            op(i)
        return (time.perf_counter() - t0) / n


def shim_off_overhead(n: int, variant: str = "today") -> tuple[float, float]:
    """Mean seconds per call of a wrapped vs the original save_context, in phase 1: with
    FEDERATION_USE_DB=0 (variant "today" or "pinned"), or with the live flag at 1 ("flag")."""
    import shim
    from federation.domain import clock as _clock
    from federation import core

    control(variant != "today")
    with federation_env(1) as root:
        if variant == "flag":
            follow_flag(root, 1)
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
    ap.add_argument("--skip-phases", action="store_true", help="skip the phases table")
    ap.add_argument("--skip-control", action="store_true", help="skip the control-plane table")
    args = ap.parse_args()
    if not args.skip_phases:
        phases_table(args)
    if not args.skip_control:
        control_table(args)


def per_call_costs(n: int = 200_000) -> None:
    """What the control plane adds to one call, measured alone: deciding the phase, counting a call."""
    from federation import _wiring
    from federation.rollout import _counts
    from federation.rollout._runtimes import RUNTIME

    def per_call(fn) -> float:
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            best = min(best, (time.perf_counter() - t0) / n)
        return best

    with federation_env(3) as root:
        env_only = per_call(_wiring.env_mode)
        pinned = per_call(lambda: RUNTIME.mode(config.settings()))
        follow_flag(root, 3)
        flagged = per_call(lambda: RUNTIME.mode(config.settings()))
        tally = _counts.Tally()
        counted = per_call(lambda: tally.observe("polls", 3, compared=True, files_s=0.0002, db_s=0.0003))
    print(f"deciding the phase: environment only {env_only * 1e9:.0f} ns, control plane pinned {pinned * 1e9:.0f} ns, "
          f"following the flag {flagged * 1e9:.0f} ns; counting one compared call {counted * 1e9:.0f} ns")


def control_table(args) -> None:
    """Each operation and phase without the control plane ("today"), with it and the phase pinned by
    the environment, and with it following the live flag (the flag read, the calls counted)."""
    print("-- the control plane: the live flag and the counters (ratios against today's figure)")
    per_call_costs()
    print(f"{'operation':18} {'phase':>5} {'today us':>9} {'pinned us':>9} {'flag us':>9} {'pin/today':>9} "
          f"{'flag/today':>10}")
    worst = 0.0
    for item in workload(args.n):
        for p in (1, 2, 3, 4):
            cost = {v: float("inf") for v in ("today", "pinned", "flag")}
            for _ in range(args.rounds):  # interleaved, so the variants share the machine's noise
                for v in cost:
                    cost[v] = min(cost[v], time_op(p, item, args.n, "1.0", v))
            rp, rf = cost["pinned"] / cost["today"], cost["flag"] / cost["today"]
            worst = max(worst, rp, rf)
            print(f"{item[0]:18} {p:5} {cost['today'] * 1e6:9.1f} {cost['pinned'] * 1e6:9.1f} "
                  f"{cost['flag'] * 1e6:9.1f} {rp:9.3f} {rf:10.3f}")
    print(f"worst control-plane ratio against today's figure: {worst:.3f}x [target <= 1.05x]")
    for v in ("today", "pinned", "flag"):
        best_w = best_o = float("inf")
        for _ in range(args.rounds):
            w, o = shim_off_overhead(args.n * 2, v)
            best_w, best_o = min(best_w, w), min(best_o, o)
        what = {"today": "FEDERATION_USE_DB=0, no control plane", "pinned": "FEDERATION_USE_DB=0, control plane",
                "flag": "live flag at 1 (unpinned), control plane"}[v]
        print(f"phase 1 ({what}): wrapped {best_w * 1e6:.2f} us, undecorated {best_o * 1e6:.2f} us, "
              f"ratio {best_w / best_o:.3f}x")
    control(True)


def phases_table(args) -> None:
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
                    cost[p] = min(cost[p], time_op(p, item, args.n, sample, "pinned"))
            r2, r3, r4 = cost[2] / cost[1], cost[3] / cost[1], cost[4] / cost[1]
            worst[sample] = max(worst[sample], r2, r3)
            print(f"{item[0]:18} {cost[1] * 1e6:10.1f} {cost[2] * 1e6:10.1f} {cost[3] * 1e6:10.1f} "
                  f"{cost[4] * 1e6:10.1f} {r2:6.2f} {r3:6.2f} {r4:6.2f}")
    print(f"worst phase 2/3 ratio against the legacy file path: {worst['1.0']:.2f}x "
          f"(reads at sample {args.sample}: {worst[args.sample]:.2f}x)")
    w, o = shim_off_overhead(args.n * 2, "pinned")
    print(f"FEDERATION_USE_DB=0: wrapped {w * 1e6:.2f} us, undecorated {o * 1e6:.2f} us, ratio {w / o:.3f}x")


if __name__ == "__main__":
    main()
