"""An adopted ``vote`` (examples/seed_core: load_polls(); mutate; save_polls()) in phases 1, 2 and 3
against the same legacy function alone (not adopted: phase 1 as the team had it), same run.

    python bench/bench_adopt.py [--n 300] [--repeat 3]

One process, one poll that already holds 50 votes; per-vote mean, best of --repeat rounds.  The
adopted phase 1 is not "the legacy function alone": it holds the polls lock and merges the save as a
delta against the load (the files only), which is what keeps a concurrent vote.
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
    t0 = time.perf_counter()
    for i in range(n):
        module.vote(pid, f"voter-{i}", "no" if i % 2 else "yes")
    return (time.perf_counter() - t0) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=300, help="votes per round")
    ap.add_argument("--repeat", type=int, default=3, help="rounds (the best is kept)")
    args = ap.parse_args()
    legacy, adopted = legacy_copy(), adopted_copy()
    rows = [("legacy vote alone (phase 1, not adopted)", legacy, 1), ("adopted vote, phase 1", adopted, 1),
            ("adopted vote, phase 2", adopted, 2), ("adopted vote, phase 3", adopted, 3)]
    best: dict[str, float] = {}
    for _ in range(args.repeat):
        for name, module, phase in rows:  # interleaved: a load spike hits every row alike
            with federation_env(phase) as root:
                s = per_vote(module, root, args.n)
            best[name] = min(best.get(name, s), s)
    base = best[rows[0][0]]
    print(f"{'':45} {'ms/vote':>9} {'x legacy':>9}")
    for name, _, _ in rows:
        print(f"{name:45} {best[name] * 1000:9.3f} {best[name] / base:9.2f}")


if __name__ == "__main__":
    main()
