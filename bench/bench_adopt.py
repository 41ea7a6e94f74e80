"""Adopted calls of both example cores in phases 1, 2 and 3 against the same legacy functions alone
(not adopted: phase 1 as the team had it), same run.

    python bench/bench_adopt.py [--n 300] [--repeat 3]

- examples/seed_core: ``vote`` (load_polls(); mutate; save_polls()) on a poll that already holds 50
  votes;
- examples/plan_core: ``post`` + ``read_new`` on a list-file inbox (nodes/{agent}/inbox.json) that
  already holds 50 read messages (each a load and a save of the list).

One process; per-call mean, best of --repeat rounds, in wall time and in CPU time (user + system of the
calling thread, so the process's background control-plane thread is left out: on a shared, loaded
machine the CPU time is the steadier figure; both are printed).  The adopted phase 1 is not "the legacy function
alone": it holds the document's lock and merges the save as a delta against the load (the files only),
which is what keeps a concurrent write.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

from _common import federation_env

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
sys.path.insert(0, str(EXAMPLES))


def legacy_copy():
    """A second, never adopted, copy of the example core."""
    spec = importlib.util.spec_from_file_location("seed_core_legacy", EXAMPLES / "seed_core" / "core.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def legacy_plan_copy():
    """A second, never adopted, copy of the plan_core package (its modules under another name)."""
    name = "plan_core_legacy"
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / "plan_core" / "__init__.py",
                                                  submodule_search_locations=[str(EXAMPLES / "plan_core")])
    package = importlib.util.module_from_spec(spec)
    sys.modules[name] = package
    spec.loader.exec_module(package)
    return sys.modules[f"{name}.state"], sys.modules[f"{name}.agent"]


def adopted_plan_copy():
    from federation import adopt

    import plan_core.adoption  # noqa: F401  (declarations only)
    from plan_core import agent, state

    assert adopt.installed(state) and adopt.installed(agent)
    return state, agent


def per_post_read(modules, root: Path, n: int) -> float:
    state, agent = modules
    state.ROOT = root
    for k in range(50):
        agent.post("seed", "bob", f"old {k}")
    agent.read_new("bob")
    t0, c0 = time.perf_counter(), time.thread_time()
    for i in range(n):
        agent.post("alice", "bob", f"hello {i}")
        agent.read_new("bob")
    return (time.perf_counter() - t0) / n, (time.thread_time() - c0) / n


def adopted_copy():
    from federation import adopt

    import seed_core.adoption  # noqa: F401  (the one install call)
    import seed_core.core as module

    assert adopt.installed(module)
    return module


def per_vote(module, root: Path, n: int) -> float:
    module.ROOT = root
    module.POLLS_FILE = root / "shared" / "polls.json"
    module.active_polls = {}
    pid = module.create_poll("lead", "Bench?", ["yes", "no"])
    for k in range(50):
        module.vote(pid, f"seed-{k}", "yes")
    t0, c0 = time.perf_counter(), time.thread_time()
    for i in range(n):
        module.vote(pid, f"voter-{i}", "no" if i % 2 else "yes")
    return (time.perf_counter() - t0) / n, (time.thread_time() - c0) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=300, help="votes per round")
    ap.add_argument("--repeat", type=int, default=3, help="rounds (the best is kept)")
    args = ap.parse_args()
    legacy, adopted = legacy_copy(), adopted_copy()
    plan_legacy, plan_adopted = legacy_plan_copy(), adopted_plan_copy()
    tables = [
        ("seed_core vote", "ms/vote", per_vote,
         [("legacy vote alone (phase 1, not adopted)", legacy, 1), ("adopted vote, phase 1", adopted, 1),
          ("adopted vote, phase 2", adopted, 2), ("adopted vote, phase 3", adopted, 3)]),
        ("plan_core post + read_new (list-file inbox)", "ms/pair", per_post_read,
         [("legacy post+read_new alone (phase 1)", plan_legacy, 1), ("adopted, phase 1", plan_adopted, 1),
          ("adopted, phase 2", plan_adopted, 2), ("adopted, phase 3", plan_adopted, 3)]),
    ]
    for title, unit, measure, rows in tables:
        wall: dict[str, float] = {}
        cpu: dict[str, float] = {}
        for _ in range(args.repeat):
            for name, module, phase in rows:  # interleaved: a load spike hits every row alike
                with federation_env(phase) as root:
                    w, c = measure(module, root, args.n)
                wall[name] = min(wall.get(name, w), w)
                cpu[name] = min(cpu.get(name, c), c)
        base_w, base_c = wall[rows[0][0]], cpu[rows[0][0]]
        print(f"{title:45} {unit + ' wall':>12} {'x legacy':>9} {unit + ' cpu':>12} {'x legacy':>9}")
        for name, _, _ in rows:
            print(f"  {name:43} {wall[name] * 1000:12.3f} {wall[name] / base_w:9.2f} "
                  f"{cpu[name] * 1000:12.3f} {cpu[name] / base_c:9.2f}")

if __name__ == "__main__":
    main()
