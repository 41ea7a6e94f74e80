"""The HTTP MCP server's cost per call (`ping` against a tool, 1 and N workers), then N agents over MCP
Streamable HTTP (one `serve --http`) against the same agents over stdio (one `serve --agent` each), same run,
both engines.

**Cost** (first table): one `serve --http [--workers W]` for W = 1 and each ``--workers`` value; K agents
(``--load-agents``, spread over ``--load-procs`` client processes) call it back to back for ``--seconds``,
first ``ping``, then a tool (``send_message`` to the next agent and ``check_inbox``, alternating).  The
clients are plain keep-alive HTTP connections posting the JSON-RPC the SDK client posts (after the SDK's
``initialize`` handshake, with its headers): they cost a fraction of the SDK client, so the server, not the
load, is what saturates.  Prints calls/s and the server's CPU per call (every process of the server: the
workers included), the tool/ping CPU ratio (target <= 1.5x) and the N-worker/1-worker calls/s ratio.
``--repo PATH`` runs the server from another checkout (a baseline; it needs no ``--workers``);
``--baseline PATH`` runs another checkout's server (1 worker) beside this one's, and ``--cost-rounds R``
measures every server in turn R times (medians; the tool/ping ratio's spread in brackets): on a shared
machine the load changes from one figure to the next, so compare servers measured in the same rounds.
``--in-process CALLS`` adds a table with no socket: each checkout's ASGI application (gate, endpoint, the
SDK's kernel, the tool) driven in one process, ``ping`` against the tool, and the same federation calls
made directly -- what a tool call costs beyond a ping and beyond its own federation work, without
uvicorn/h11 and the clients (steadier on a loaded machine).

Each agent runs ROUNDS ticks of three tool calls through the official MCP SDK client: ``pulse``,
``send_message`` (to the next agent) and ``vote`` (on one shared poll), all agents at once.  Prints,
per engine, transport and N: calls/s over the whole run and p50/p99 per call in ms (every call of
every agent), and the CPU per call of the clients (this process) and of the server(s) (its child processes).  The
clients all run in this process (one event loop), beside the server(s): on a small
machine they compete for the same cores, so compare the two transports of one run, not runs.
Target: HTTP p99 under 50 ms at 64 agents.

    python bench/bench_http.py [--workers 2] [--seconds 4] [--load-agents 8] [--load-procs 2] [--repo PATH]
                               [--baseline PATH] [--cost-rounds 3] [--in-process 2000]
                               [--agents 1 16 64] [--rounds 20] [--engines sqlite postgresql]
                               [--stdio-max 64] [--pg-url URL] [--skip-cost] [--skip-compare]
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing as mp
import os
import subprocess
import sys
import time
from contextlib import AsyncExitStack
from pathlib import Path

from _common import federation_env, postgres_url

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
TOOLS = ("pulse", "send_message", "vote")


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return pick(0.50) * 1e3, pick(0.99) * 1e3


def child_env(repo: Path = REPO) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(repo) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def start_http(log: Path, *extra: str, repo: Path = REPO) -> tuple[subprocess.Popen, str]:
    err = log.open("w")
    proc = subprocess.Popen([sys.executable, "-m", "federation", "serve", "--http", "--port", "0", *extra],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, env=child_env(repo),
                            cwd=str(repo))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for line in log.read_text().splitlines():
            if line.startswith("federation MCP over HTTP on "):
                return proc, line.split(" on ", 1)[1].split(";", 1)[0]
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    raise SystemExit(f"serve --http did not start: {log.read_text()[-2000:]}")


async def open_http(stack: AsyncExitStack, url: str, token: str):
    from mcp.client.session import ClientSession
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared._httpx_utils import create_mcp_http_client

    http = await stack.enter_async_context(create_mcp_http_client(headers={"Authorization": f"Bearer {token}"}))
    read, write = await stack.enter_async_context(streamable_http_client(url, http_client=http))
    session = await stack.enter_async_context(ClientSession(read, write))
    await session.initialize()
    return session


async def open_stdio(stack: AsyncExitStack, agent: str, errlog):
    from mcp.client.session import ClientSession
    from mcp.client.stdio import StdioServerParameters, stdio_client

    params = StdioServerParameters(command=sys.executable, args=["-m", "federation", "serve", "--agent", agent],
                                   env=child_env(), cwd=str(REPO))
    read, write = await stack.enter_async_context(stdio_client(params, errlog=errlog))
    session = await stack.enter_async_context(ClientSession(read, write))
    await session.initialize()
    return session


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process *pid* so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of process *pid* and of every process below it, alive now (a server and its workers)."""
    total = 0.0
    try:
        total += cpu_seconds(pid)
        for task in Path(f"/proc/{pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                total += tree_cpu_seconds(int(child))
    except (OSError, ValueError, IndexError):
        pass
    return total


def children_cpu_seconds() -> float:
    """CPU seconds of this process's child processes (the servers), alive now."""
    total = 0.0
    for task in Path("/proc/self/task").iterdir():
        for pid in (task / "children").read_text().split():
            try:
                total += cpu_seconds(int(pid))
            except (OSError, ValueError, IndexError):
                pass
    return total


# -- the cost of a call: ping against a tool, 1 and N workers ------------------------------------------

def _handshake(url: str, token: str) -> tuple[http.client.HTTPConnection, str, dict[str, str]]:
    """A keep-alive connection past the SDK's initialize handshake: (connection, path, headers to post with)."""
    from mcp_types.version import LATEST_HANDSHAKE_VERSION

    parts = url.split("/", 3)
    host, port = parts[2].rsplit(":", 1)
    path = "/" + parts[3]
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json",
               "Accept": "application/json, text/event-stream"}
    status, _ = _post(conn, path, headers, {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": LATEST_HANDSHAKE_VERSION, "capabilities": {},
        "clientInfo": {"name": "bench_http", "version": "0"}}})
    if status != 200:
        raise SystemExit(f"initialize: HTTP {status}")
    headers["MCP-Protocol-Version"] = LATEST_HANDSHAKE_VERSION
    status, _ = _post(conn, path, headers, {"jsonrpc": "2.0", "method": "notifications/initialized"})
    if status != 202:
        raise SystemExit(f"notifications/initialized: HTTP {status}")
    return conn, path, headers


def _post(conn: http.client.HTTPConnection, path: str, headers: dict[str, str], body: dict) -> tuple[int, dict]:
    conn.request("POST", path, json.dumps(body), headers)
    resp = conn.getresponse()
    data = resp.read()
    return resp.status, (json.loads(data) if data else {})


def _load_thread(url: str, token: str, me: str, nxt: str, op: str, start: float, stop: float,
                 out: list[int]) -> None:
    conn, path, headers = _handshake(url, token)
    if op == "ping":
        bodies = [{"method": "ping"}]
    else:
        bodies = [{"method": "tools/call", "params": {"name": "send_message",
                                                      "arguments": {"recipient": nxt, "content": f"from {me}"}}},
                  {"method": "tools/call", "params": {"name": "check_inbox", "arguments": {}}}]
    calls, n = 0, 0
    while time.time() < start:
        time.sleep(0.001)
    while time.time() < stop:
        n += 1
        status, doc = _post(conn, path, headers, {"jsonrpc": "2.0", "id": n, **bodies[n % len(bodies)]})
        if status != 200 or "result" not in doc or doc["result"].get("isError"):
            print(f"{op} failed for {me}: HTTP {status} {str(doc)[:300]}", file=sys.stderr, flush=True)
            return
        calls += 1
    conn.close()
    out.append(calls)


def _load_proc(url: str, agents: list[tuple[str, str, str]], op: str, start: float, stop: float, queue) -> None:
    import threading

    out: list[int] = []
    threads = [threading.Thread(target=_load_thread, args=(url, token, me, nxt, op, start, stop, out))
               for me, nxt, token in agents]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    queue.put(sum(out) if len(out) == len(agents) else -1)


def measure_load(pid: int, url: str, tokens: dict[str, str], op: str, seconds: float,
                 procs: int) -> tuple[float, float]:
    """(calls/s, server CPU ms per call) of *op* ("ping" or "tool") for *seconds*, all agents at once."""
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    names = sorted(tokens)
    agents = [(me, names[(i + 1) % len(names)], tokens[me]) for i, me in enumerate(names)]
    start = time.time() + 1.5  # every connection made (and its handshake done) before the clock starts
    stop = start + seconds
    workers = [ctx.Process(target=_load_proc, args=(url, agents[i::procs], op, start, stop, queue))
               for i in range(procs)]
    for w in workers:
        w.start()
    while time.time() < start:
        time.sleep(0.001)
    c0 = tree_cpu_seconds(pid)
    while time.time() < stop:
        time.sleep(0.005)
    c1 = tree_cpu_seconds(pid)
    counts = [queue.get(timeout=120) for _ in workers]
    for w in workers:
        w.join()
    if any(c < 0 for c in counts):
        raise SystemExit(f"a load process failed ({op})")
    calls = sum(counts)
    return calls / seconds, (c1 - c0) / max(calls, 1) * 1e3


def bench_cost(engine: str, db_url: str | None, worker_counts: list[int], seconds: float, n_agents: int,
               procs: int, repo: Path, baseline: Path | None = None, rounds: int = 1) -> list[tuple]:
    """The cost table of *engine*: every server (this checkout's -- or *repo*'s -- with each worker count, and
    *baseline*'s with one worker) started at once on one database, then *rounds* rounds, each measuring
    ``ping`` then the tool on every server in turn (a change in the machine's load falls on all of them
    alike); medians over the rounds, and the spread of the tool/ping ratio."""
    import statistics

    from federation.apps import agent_tokens

    servers = [("baseline", baseline, 1)] if baseline is not None else []
    servers += [("this" if baseline is not None else "", repo, w) for w in worker_counts]
    rows = []
    with federation_env(4, db_url) as root:
        if db_url:
            _reset_pg(db_url)
        names = [f"load-{i:02d}" for i in range(n_agents)]
        tokens = {name: agent_tokens.add(name, root)[0] for name in names}
        from federation import messaging

        messaging.send_message(names[0], names[1], "the database made before the server starts")
        running = []
        try:
            for i, (_label, path, w) in enumerate(servers):
                extra = () if w == 1 else ("--workers", str(w))
                running.append(start_http(root.parent / f"{root.name}-cost-{i}.stderr", *extra, repo=path))
            for proc, url in running:
                measure_load(proc.pid, url, tokens, "tool", 1.0, procs)  # warm-up: every agent's first call
            figures: list[list[tuple[float, float, float, float]]] = [[] for _ in servers]
            for _ in range(rounds):
                for i, (proc, url) in enumerate(running):
                    figures[i].append((*measure_load(proc.pid, url, tokens, "ping", seconds, procs),
                                       *measure_load(proc.pid, url, tokens, "tool", seconds, procs)))
        finally:
            for proc, _url in running:
                proc.terminate()
            for proc, _url in running:
                proc.wait(30)
    for (label, _path, w), measured in zip(servers, figures):
        ping_rate, ping_ms, tool_rate, tool_ms = (statistics.median(f[k] for f in measured) for k in range(4))
        ratios = sorted(f[3] / f[1] for f in measured)
        rows.append((engine, label, w, ping_rate, ping_ms, tool_rate, tool_ms, statistics.median(ratios)))
        base = next(r for r in rows if r[1] == label and r[2] == 1)
        spread = f"  ({ratios[0]:.2f}-{ratios[-1]:.2f}x)" if len(ratios) > 1 else ""
        print(f"  {engine:10} {label:8} {w:7d} {ping_rate:9.0f} {ping_ms:8.3f} {tool_rate:9.0f} {tool_ms:8.3f} "
              f"{statistics.median(ratios):9.2f}x {tool_rate / base[5]:9.2f}x{spread}", flush=True)
    return rows


#: One round of the in-process table, run by a fresh interpreter on a checkout (``python -c``; argv: calls):
#: the server's ASGI application driven without a socket -- the gate, the endpoint, the SDK's kernel and
#: the tool -- then the same federation calls made directly; prints server CPU us per call as JSON.
_IN_PROCESS_ROUND = r"""
import asyncio, gc, json, os, sys, tempfile, time
os.environ["FEDERATION_ROOT"] = tempfile.mkdtemp(prefix="fedbench-inproc-")
from federation import config
os.environ.update(config.phase_env(4))
config.reset()
from federation import Federation, messaging
from federation.apps import agent_tokens, mcp_http
N = int(sys.argv[1])
fed = Federation(config.settings())
tokens = {a: agent_tokens.add(a, fed.settings.root)[0] for a in ("alice", "bob")}
app = mcp_http.create_app(agent_tokens.TokenRegistry(agent_tokens.tokens_path(fed.settings.root)), fed)

def scope(agent):
    return {"type": "http", "method": "POST", "path": "/mcp", "client": ("127.0.0.1", 1), "query_string": b"",
            "headers": [(b"host", b"127.0.0.1:8765"), (b"authorization", b"Bearer " + tokens[agent].encode()),
                        (b"content-type", b"application/json"), (b"accept", b"application/json, text/event-stream"),
                        (b"mcp-protocol-version", b"2025-11-25")]}

async def call(sc, body):
    raw = json.dumps(body).encode()
    sc = {**sc, "headers": sc["headers"] + [(b"content-length", str(len(raw)).encode())]}
    pending = [{"type": "http.request", "body": raw, "more_body": False}]
    out = []
    async def receive():
        return pending.pop() if pending else await asyncio.Event().wait()
    async def send(message):
        out.append(message)
    await app(sc, receive, send)
    doc = json.loads(out[1]["body"])
    assert "result" in doc and not doc["result"].get("isError"), doc

async def main():
    queue, started = asyncio.Queue(), asyncio.Event()
    async def lifespan_send(message):
        started.set()
    await queue.put({"type": "lifespan.startup"})
    lifespan = asyncio.create_task(app({"type": "lifespan"}, queue.get, lifespan_send))
    await started.wait()
    ping = [(scope("alice"), {"method": "ping"})]
    tool = [(scope("alice"), {"method": "tools/call", "params": {"name": "send_message",
                                                                "arguments": {"recipient": "bob", "content": "hi"}}}),
            (scope("bob"), {"method": "tools/call", "params": {"name": "check_inbox", "arguments": {}}})]
    for i in range(200):
        await call(ping[0][0], {"jsonrpc": "2.0", "id": i, **ping[0][1]})
        await call(tool[i % 2][0], {"jsonrpc": "2.0", "id": i, **tool[i % 2][1]})
    settle = getattr(mcp_http, "_settle_heap", None)  # as the checkout's server does before it serves
    if settle is not None:
        settle()
    cpu = {}
    for op, bodies in (("ping", ping), ("tool", tool)):
        t = time.process_time()
        for i in range(N):
            sc, body = bodies[i % len(bodies)]
            await call(sc, {"jsonrpc": "2.0", "id": i, **body})
        cpu[op] = (time.process_time() - t) / N * 1e6
    with fed.serve():
        t = time.process_time()
        for i in range(N):
            messaging.send_message("alice", "bob", "hi") if i % 2 == 0 else messaging.check_inbox("bob")
        cpu["federation"] = (time.process_time() - t) / N * 1e6
    await queue.put({"type": "lifespan.shutdown"})
    await lifespan
    print(json.dumps(cpu))

asyncio.run(main())
"""


def bench_in_process(repos: list[tuple[str, Path]], rounds: int, calls: int) -> None:
    """The in-process table: each checkout's ASGI application, one fresh process per checkout and round, the
    checkouts in turn in every round (phase 4, SQLite; no socket, so no uvicorn/h11)."""
    import statistics

    print(f"in process (phase 4, SQLite; {calls} calls per figure, {rounds} round(s), the gate + endpoint + "
          f"SDK kernel + tool, no socket; federation = the same calls made directly)")
    print(f"  {'server':8} {'ping us':>8} {'tool us':>8} {'tool/ping':>10} {'federation us':>14} "
          f"{'tool-ping-federation':>21}  (server CPU per call)")
    figures: dict[str, list[dict]] = {label: [] for label, _ in repos}
    for _ in range(rounds):
        for label, repo in repos:
            done = subprocess.run([sys.executable, "-c", _IN_PROCESS_ROUND, str(calls)], env=child_env(repo),
                                  cwd=str(repo), capture_output=True, text=True, timeout=600)
            if done.returncode != 0:
                raise SystemExit(f"in-process round of {repo} failed: {done.stderr[-2000:]}")
            figures[label].append(json.loads(done.stdout.strip().splitlines()[-1]))
    for label, measured in figures.items():
        ping, tool, fed = (statistics.median(f[k] for f in measured) for k in ("ping", "tool", "federation"))
        ratios = sorted(f["tool"] / f["ping"] for f in measured)
        spread = f"  ({ratios[0]:.2f}-{ratios[-1]:.2f}x)" if len(ratios) > 1 else ""
        print(f"  {label:8} {ping:8.0f} {tool:8.0f} {statistics.median(ratios):9.2f}x {fed:14.0f} "
              f"{tool - ping - fed:21.0f}{spread}", flush=True)


def run_agents(transport: str, n: int, rounds: int, poll: str, url: str | None, tokens: dict[str, str],
               work: Path) -> tuple[float, list[float], dict[str, float]]:
    """(wall seconds of the timed part, every call's seconds, CPU seconds of the client and the server)."""
    import anyio

    names = [f"agent-{i:03d}" for i in range(n)]
    samples: list[float] = []
    cpu: dict[str, float] = {}

    async def agent_loop(i: int, session) -> None:
        me, nxt = names[i], names[(i + 1) % n]
        for r in range(rounds):
            for tool, args in (("pulse", {}), ("send_message", {"recipient": nxt, "content": f"{me} {r}"}),
                               ("vote", {"poll_id": poll, "option": "a" if (i + r) % 2 else "b"})):
                t0 = time.perf_counter()
                result = await session.call_tool(tool, args)
                took = time.perf_counter() - t0
                if result.is_error:
                    raise SystemExit(f"{tool} failed for {me}: {result.content}")
                samples.append(took)

    async def main() -> float:
        with open(work / f"stdio-{transport}-{n}.stderr", "w") as errlog:
            async with AsyncExitStack() as stack:
                sessions = []
                for name in names:  # connected (and the stdio servers started) before the clock starts
                    sessions.append(await open_http(stack, url, tokens[name]) if transport == "http"
                                    else await open_stdio(stack, name, errlog))
                for session in sessions:  # warm-up: each agent's first call (an HTTP server builds its tools)
                    await session.call_tool("heartbeat", {})
                t0, c0 = time.perf_counter(), time.process_time()
                s0 = children_cpu_seconds()
                async with anyio.create_task_group() as tg:
                    for i, session in enumerate(sessions):
                        tg.start_soon(agent_loop, i, session)
                cpu["client"] = time.process_time() - c0
                cpu["server"] = children_cpu_seconds() - s0
                return time.perf_counter() - t0

    wall = anyio.run(main)
    return wall, samples, cpu


def bench_engine(engine: str, db_url: str | None, counts: list[int], rounds: int, stdio_max: int) -> list[tuple]:
    from federation.apps import agent_tokens
    from federation import governance

    rows = []
    for n in counts:
        with federation_env(4, db_url) as root:  # phase 4: the database alone (the fleet's end state)
            if db_url:
                _reset_pg(db_url)
            names = [f"agent-{i:03d}" for i in range(n)]
            tokens = {name: agent_tokens.add(name, root)[0] for name in names}
            poll = governance.create_poll(names[0], "Which?", ["a", "b"])
            proc, url = start_http(root.parent / f"{root.name}-http.stderr")
            try:
                wall, samples, cpu = run_agents("http", n, rounds, poll, url, tokens, root.parent)
            finally:
                proc.terminate()
                proc.wait(30)
            rows.append((engine, "http", n, len(samples) / wall, *percentiles(samples),
                         cpu["client"] / len(samples) * 1e3, cpu["server"] / len(samples) * 1e3))
            if n <= stdio_max:
                wall, samples, cpu = run_agents("stdio", n, rounds, poll, None, tokens, root.parent)
                rows.append((engine, "stdio", n, len(samples) / wall, *percentiles(samples),
                             cpu["client"] / len(samples) * 1e3, cpu["server"] / len(samples) * 1e3))
            print_row(rows[-2] if n <= stdio_max else rows[-1])
            if n <= stdio_max:
                print_row(rows[-1])
    return rows


def _reset_pg(url: str) -> None:
    import psycopg

    from federation.stores.schema import TABLES
    from federation.stores.sqlstore import forget_stores

    forget_stores()
    with psycopg.connect(url, autocommit=True) as conn:
        for table in (*TABLES, "federation_meta", "schema_version"):
            conn.execute(f"DROP TABLE IF EXISTS {table} CASCADE")


def print_row(row: tuple) -> None:
    engine, transport, n, rate, p50, p99, client_ms, server_ms = row
    server = "-" if server_ms is None else f"{server_ms:.1f}"
    print(f"  {engine:10} {transport:6} {n:4d} {rate:9.0f} {p50:8.1f} {p99:8.1f} {client_ms:10.1f} {server:>10}",
          flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--agents", type=int, nargs="+", default=[1, 16, 64])
    ap.add_argument("--rounds", type=int, default=20, help="ticks per agent (3 calls each)")
    ap.add_argument("--engines", nargs="+", choices=["sqlite", "postgresql"], default=["sqlite", "postgresql"])
    ap.add_argument("--stdio-max", type=int, default=64, help="run stdio only up to this many agents "
                    "(each is a server process of its own)")
    ap.add_argument("--pg-url", help="PostgreSQL database to use (default: a throwaway server)")
    ap.add_argument("--workers", type=int, nargs="+", default=[2],
                    help="cost table: worker counts to measure beside 1 (serve --http --workers N)")
    ap.add_argument("--seconds", type=float, default=4.0, help="cost table: seconds per measurement")
    ap.add_argument("--load-agents", type=int, default=8, help="cost table: agents calling at once")
    ap.add_argument("--load-procs", type=int, default=2, help="cost table: client processes they run in")
    ap.add_argument("--repo", type=Path, default=REPO,
                    help="cost table: run the server from this checkout (a baseline: 1 worker only)")
    ap.add_argument("--baseline", type=Path, help="cost table: also run this checkout's server (1 worker), "
                    "measured in the same rounds as this one's")
    ap.add_argument("--cost-rounds", type=int, default=1, help="cost table: rounds of ping + tool on every "
                    "server in turn (medians, and the tool/ping ratio's spread)")
    ap.add_argument("--in-process", type=int, metavar="CALLS", default=0, help="also the in-process table "
                    "(SQLite): CALLS calls per figure through the ASGI application without a socket, "
                    "--cost-rounds rounds, with --baseline's beside this checkout's")
    ap.add_argument("--skip-cost", action="store_true", help="skip the cost table")
    ap.add_argument("--skip-compare", action="store_true", help="skip the HTTP vs stdio table")
    args = ap.parse_args()
    print(f"load average {open('/proc/loadavg').read().strip()}")
    if args.in_process:
        repos = ([("baseline", args.baseline)] if args.baseline else []) + [("this", args.repo)]
        bench_in_process(repos, args.cost_rounds, args.in_process)
        print(f"load average {open('/proc/loadavg').read().strip()}")
    if not args.skip_cost:
        counts = [1] if args.repo.resolve() != REPO else sorted({1, *args.workers})
        print(f"cost: {args.load_agents} agents in {args.load_procs} client processes, {args.seconds:g} s per "
              f"figure, {args.cost_rounds} round(s); tool = send_message and check_inbox alternating; server "
              f"{args.repo}" + (f", baseline {args.baseline}" if args.baseline else ""))
        print(f"  {'engine':10} {'server':8} {'workers':>7} {'ping/s':>9} {'ping ms':>8} {'tool/s':>9} {'tool ms':>8} "
              f"{'tool/ping':>10} {'vs 1 wkr':>10}  (ms: server CPU per call, every process; target tool/ping "
              f"<= 1.5x)")
        cost = dict(worker_counts=counts, seconds=args.seconds, n_agents=args.load_agents, procs=args.load_procs,
                    repo=args.repo, baseline=args.baseline, rounds=args.cost_rounds)
        if "sqlite" in args.engines:
            bench_cost("SQLite", None, **cost)
        if "postgresql" in args.engines:
            with postgres_url(args.pg_url) as url:
                bench_cost("PostgreSQL", url, **cost)
        print(f"load average {open('/proc/loadavg').read().strip()}")
    if args.skip_compare:
        return
    print(f"{len(args.agents)} sizes x {args.rounds} rounds of pulse+send_message+vote per agent, phase 4")
    print(f"  {'engine':10} {'via':6} {'N':>4} {'calls/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'client CPU':>10} "
          f"{'server CPU':>10}  (CPU: ms per call)")
    rows = []
    if "sqlite" in args.engines:
        rows += bench_engine("SQLite", None, args.agents, args.rounds, args.stdio_max)
    if "postgresql" in args.engines:
        with postgres_url(args.pg_url) as url:
            rows += bench_engine("PostgreSQL", url, args.agents, args.rounds, args.stdio_max)
    by = {(e, t, n): (rate, p99) for e, t, n, rate, _p50, p99, *_cpu in rows}
    for (engine, transport, n), (rate, p99) in sorted(by.items()):
        if transport == "http" and (engine, "stdio", n) in by:
            s_rate, s_p99 = by[(engine, "stdio", n)]
            print(f"  {engine} N={n}: HTTP/stdio calls/s {rate / s_rate:.2f}x, p99 {p99:.1f} vs {s_p99:.1f} ms")
    for (engine, transport, n), (_rate, p99) in sorted(by.items()):
        if transport == "http" and n == 64:
            print(f"  {engine} 64 agents over HTTP: p99 {p99:.1f} ms (target < 50 ms: "
                  f"{'met' if p99 < 50 else 'MISSED'})")


if __name__ == "__main__":
    main()
