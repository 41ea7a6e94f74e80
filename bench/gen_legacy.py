#!/usr/bin/env python3
"""Write a legacy federation tree (for demos and benchmarks): ``gen_legacy.py ROOT --messages 100000``."""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from federation.domain.generate import generate  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("root", type=Path)
    parser.add_argument("--agents", type=int, default=50)
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--polls", type=int, default=20)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--malformed", action="store_true", help="add one file of each malformed kind")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    out = generate(args.root, agents=args.agents, messages=args.messages, polls=args.polls, sessions=args.sessions,
                   malformed=args.malformed, seed=args.seed)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
