"""A fleet of agents ticking for a fixed time: ticks/s, p50/p99 per operation, and nothing lost.

--agents processes (default 16), each one agent, tick for --seconds (from the
moment the agent is connected; ticks/s adds up every agent's own rate): a pulse
(heartbeat, inbox claimed, open polls, roles, everyone's context), then what a
real agent does with it: vote on the first open poll it has not voted on, send
a message to another agent, set its context.  --mcp of the agents (default 4)
do the same through their own ``federation serve`` over MCP stdio.

Paths: phase 4 on SQLite, phase 4 on PostgreSQL (a throwaway server, or
--pg-url), and the legacy file path (phase 1).  After the run every agent's
inbox is drained; "lost" counts messages never received, "twice" messages
received more than once, and "votes off" the polls whose stored votes differ
from the last vote each agent cast.

    python bench/bench_fleet.py [--agents 16] [--mcp 4] [--seconds 20] [--polls 40] [--paths sqlite postgresql files]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

from _common import federation_env, postgres_url, run_processes

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

REPO = Path(__file__).resolve().parent.parent
OPS = ("pulse", "vote", "send_message", "set_context")


def agent_name(i: int) -> str:
    return f"agent-{i:02d}"


class Record:
    """What one agent did: latencies per operation, messages sent and received, last vote per poll."""

    def __init__(self) -> None:
        self.latency: dict[str, list[float]] = {op: [] for op in OPS}
        self.sent: list[str] = []
        self.received: list[str] = []
        self.votes: dict[str, str] = {}
        self.ticks = 0
        self.seconds = 0.0  # how long this agent ticked

    def dump(self, path: Path) -> None:
        path.write_text(json.dumps(self.__dict__))


def tick_direct(i: int, agents: int, seconds: float, out: Path) -> None:
    from federation import context, governance, messaging

    me, rec, rnd = agent_name(i), Record(), random.Random(i)

    def timed(op, fn, *args):
        t0 = time.perf_counter()
        result = fn(*args)
        rec.latency[op].append(time.perf_counter() - t0)
        return result

    start = time.monotonic()
    deadline = start + seconds
    while time.monotonic() < deadline:
        state = timed("pulse", messaging.pulse, me)
        rec.received += [m["id"] for m in state["messages"]]
        if state["open_polls"]:
            poll = state["open_polls"][0]
            option = rnd.choice(poll["options"])
            timed("vote", governance.vote, poll["id"], me, option)
            rec.votes[poll["id"]] = option
        peer = agent_name((i + 1 + rnd.randrange(agents - 1)) % agents)  # anyone but me
        rec.sent.append(timed("send_message", messaging.send_message, me, peer, f"tick {rec.ticks} from {me}"))
        timed("set_context", context.set_context, me, f"tick {rec.ticks}")
        rec.ticks += 1
    rec.seconds = time.monotonic() - start
    rec.dump(out)


def tick_mcp(i: int, agents: int, seconds: float, out: Path) -> None:
    import anyio
    from mcp.client.session import ClientSession
    from mcp.client.stdio import StdioServerParameters, stdio_client

    me, rec, rnd = agent_name(i), Record(), random.Random(i)
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    params = StdioServerParameters(command=sys.executable, args=["-m", "federation", "serve", "--agent", me],
                                   env=env, cwd=str(REPO))

    async def run() -> None:
        with open(os.devnull, "w") as errlog:
            async with stdio_client(params, errlog=errlog) as (read, write):
                async with ClientSession(read, write) as session:
                    await session.initialize()
                    start = time.monotonic()  # the agent's own time: its server is up
                    deadline = start + seconds

                    async def timed(op: str, tool: str, **arguments):
                        t0 = time.perf_counter()
                        result = await session.call_tool(tool, arguments)
                        rec.latency[op].append(time.perf_counter() - t0)
                        if result.is_error:
                            raise RuntimeError(f"{tool}: {result.content[0].text}")
                        return result.structured_content

                    while time.monotonic() < deadline:
                        state = await timed("pulse", "pulse")
                        rec.received += [m["id"] for m in state["messages"]]
                        if state["open_polls"]:
                            poll = state["open_polls"][0]
                            option = rnd.choice(poll["options"])
                            await timed("vote", "vote", poll_id=poll["id"], option=option)
                            rec.votes[poll["id"]] = option
                        peer = agent_name((i + 1 + rnd.randrange(agents - 1)) % agents)
                        sent = await timed("send_message", "send_message", recipient=peer,
                                           content=f"tick {rec.ticks} from {me}")
                        rec.sent.append(sent["message_id"])
                        await timed("set_context", "set_context", text=f"tick {rec.ticks}")
                        rec.ticks += 1
                    rec.seconds = time.monotonic() - start

    anyio.run(run)
    rec.dump(out)


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def run_path(label: str, phase: int, url: str | None, args: argparse.Namespace) -> dict:
    from federation import context, governance, messaging

    if url:
        from bench_pg import reset_pg

        reset_pg(url)
    with federation_env(phase, url):
        for i in range(args.agents):
            context.set_context(agent_name(i), "starting")
        polls = [governance.create_poll("chair", f"Question {k}?", ["yes", "no", "later"]) for k in range(args.polls)]
        results_dir = Path(tempfile.mkdtemp(prefix="fleet-"))

        def worker(i: int) -> None:
            out = results_dir / f"{i}.json"
            (tick_mcp if i < args.mcp else tick_direct)(i, args.agents, args.seconds, out)

        wall = run_processes(args.agents, worker)
        records = {i: json.loads((results_dir / f"{i}.json").read_text()) for i in range(args.agents)}
        # drain: what was sent during the last ticks and not yet claimed
        drained = {i: [m["id"] for m in messaging.check_inbox(agent_name(i))] for i in range(args.agents)}
        received: dict[str, int] = {}
        for i, r in records.items():
            for mid in r["received"] + drained[i]:
                received[mid] = received.get(mid, 0) + 1
        sent = [mid for r in records.values() for mid in r["sent"]]
        lost = sum(1 for mid in sent if mid not in received)
        twice = sum(1 for n in received.values() if n > 1)
        votes_off = 0
        for pid in polls:
            stored = governance.get_poll(pid)["votes"]
            expected = {agent_name(i): r["votes"][pid] for i, r in records.items() if pid in r["votes"]}
            votes_off += stored != expected
        ticks = sum(r["ticks"] for r in records.values())
        rate = sum(r["ticks"] / r["seconds"] for r in records.values() if r["seconds"])  # the fleet's ticks/s
        latency = {op: [s for i, r in records.items() if i >= args.mcp for s in r["latency"][op]] for op in OPS}
        mcp_latency = {op: [s for i, r in records.items() if i < args.mcp for s in r["latency"][op]] for op in OPS}
    return {"label": label, "wall": wall, "ticks": ticks, "rate": rate, "sent": len(sent), "lost": lost, "twice": twice,
            "votes_off": votes_off, "latency": latency, "mcp_latency": mcp_latency}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--agents", type=int, default=16)
    ap.add_argument("--mcp", type=int, default=4, help="how many of the agents go through MCP stdio")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--polls", type=int, default=40, help="open polls to vote on")
    ap.add_argument("--paths", nargs="+", default=["sqlite", "postgresql", "files"],
                    choices=["sqlite", "postgresql", "files"])
    ap.add_argument("--pg-url", help="PostgreSQL database to use (default: a throwaway server; tables are dropped)")
    args = ap.parse_args()
    if args.agents < 2 or not 0 <= args.mcp <= args.agents:
        ap.error("--agents must be at least 2 and --mcp between 0 and --agents")
    from federation._logging import configure

    configure()  # the library's events go to stderr, not into the table
    with postgres_url(args.pg_url, needed="postgresql" in args.paths) as url:
        paths = {"sqlite": ("phase 4, SQLite", 4, None), "postgresql": ("phase 4, PostgreSQL", 4, url),
                 "files": ("legacy files (phase 1)", 1, None)}
        print(f"{args.agents} agents ({args.mcp} over MCP stdio) ticking for {args.seconds:.0f} s: "
              "pulse, vote, send_message, set_context; latencies in ms")
        ok = True
        for name in args.paths:
            r = run_path(*paths[name], args)
            print(f"{r['label']}: {r['rate']:.1f} ticks/s ({r['ticks']} ticks; each agent ticked "
                  f"{args.seconds:.0f} s once its connection was up), "
                  f"{r['sent']} messages sent, lost {r['lost']}, delivered twice {r['twice']}, "
                  f"polls with votes off {r['votes_off']}")
            print(f"  {'operation':14} {'api p50':>8} {'api p99':>8} {'mcp p50':>8} {'mcp p99':>8}")
            for op in OPS:
                s, m = r["latency"][op], r["mcp_latency"][op]
                print(f"  {op:14} {percentile(s, .5) * 1e3:8.2f} {percentile(s, .99) * 1e3:8.2f} "
                      f"{percentile(m, .5) * 1e3:8.2f} {percentile(m, .99) * 1e3:8.2f}")
            ok = ok and r["lost"] == 0 and r["twice"] == 0 and r["votes_off"] == 0
    print("zero lost (every message received once, every vote counted): " + ("yes" if ok else "NO"))
    if not ok:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
