"""A bounded soak: one `serve --http` with N agents and a few `serve --agent` stdio servers under steady
traffic for a fixed time, sampling what must stay bounded, and printing its slope per hour.

Every ``--every`` seconds it samples the HTTP server (every process of it, workers included) and the stdio
servers: RSS, open descriptors, threads; and the database file, its WAL and ``control/``'s size.  At the
end it prints, per quantity, the first and last sample and the least-squares slope per hour over the
**second half** of the run (the first half is warm-up: caches filling, the WAL growing to its checkpoint
size).  A slope within noise of zero is "flat".

The traffic: each HTTP agent (a keep-alive connection posting the SDK client's JSON-RPC) loops
``send_message`` to the next agent, ``pulse`` with a lease, ``ack`` of what it got, ``set_context``, with
``--pause`` seconds between ticks; each stdio server's agent does the same through its pipes.

``--chores`` adds, during the traffic, what an operator's fleet runs beside it (issue 30): every fourth HTTP
agent is a *forgetful* receiver (it leases for 1 s and never acks, so its messages come back and, after
``FEDERATION_MAX_ATTEMPTS`` -- 2 here -- deliveries, are dead letters), and a chores thread runs
``federation prune --older-than 1s`` every ``--prune-every`` seconds, ``federation report`` every
``--report-every`` and ``federation backup`` (to a file removed after) every ``--backup-every``; their exit
codes and times are printed at the end.

    python bench/bench_soak.py [--minutes 5] [--agents 16] [--stdio 2] [--every 10] [--phase 4]
                               [--workers 1] [--pause 0.05] [--repo PATH] [--pg-url URL]
                               [--chores] [--prune-every 15] [--report-every 60] [--backup-every 120]
                               [--env NAME=VALUE ...] [--stdio-probe]

``--stdio-probe`` runs each stdio server under ``bench/_stdio_probe.py`` (the same server, plus a sampler
thread) and prints, per stdio server, where its memory is: glibc's heap, Python's small-object arenas,
SQLite's heap, the objects the garbage collector tracks -- first and last sample and second-half slope.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from _common import federation_env
from bench_http import REPO, _handshake, _post, child_env, start_http


def tree_pids(pid: int) -> list[int]:
    pids = [pid]
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                pids += tree_pids(int(child))
    except (OSError, ValueError):
        pass
    return pids


def proc_sample(pids: list[int]) -> dict[str, float]:
    """RSS (MB), descriptors and threads summed over *pids*."""
    rss = fds = threads = 0.0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss += int(line.split()[1]) / 1024
                elif line.startswith("Threads:"):
                    threads += int(line.split()[1])
            fds += len(os.listdir(f"/proc/{pid}/fd"))
        except OSError:
            continue
    return {"rss_mb": rss, "fds": fds, "threads": threads}


def size_mb(path: Path) -> float:
    if path.is_file():
        return path.stat().st_size / 1e6
    total = 0
    for dirpath, _dirs, names in os.walk(path):
        for name in names:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass
    return total / 1e6


def slope_per_hour(points: list[tuple[float, float]]) -> float:
    n = len(points)
    if n < 2:
        return 0.0
    mt = sum(t for t, _ in points) / n
    mv = sum(v for _, v in points) / n
    var = sum((t - mt) ** 2 for t, _ in points)
    return 0.0 if var == 0 else sum((t - mt) * (v - mv) for t, v in points) / var * 3600


def http_agent(url: str, token: str, me: str, nxt: str, stop: float, pause: float, out: dict,
               forgetful: bool = False) -> None:
    conn, path, headers = _handshake(url, token)
    n, acked = 0, []

    def call(name: str, arguments: dict) -> dict:
        nonlocal n
        n += 1
        status, doc = _post(conn, path, headers, {"jsonrpc": "2.0", "id": n, "method": "tools/call",
                                                  "params": {"name": name, "arguments": arguments}})
        ok = status == 200 and "result" in doc and not doc["result"].get("isError")
        out["calls"] += 1
        if not ok:
            out["errors"] += 1
            out.setdefault("first_error", f"{name}: HTTP {status} {str(doc)[:300]}")
            return {}
        return doc["result"].get("structuredContent") or {}

    while time.time() < stop:
        call("send_message", {"recipient": nxt, "content": f"{me} {n}"})
        if forgetful:  # leases for a second and never acks: redelivered, then dead letters
            call("pulse", {"lease": 1})
        else:
            got = call("pulse", {"lease": 60, **({"ack": acked} if acked else {})})
            acked = [m["id"] for m in got.get("messages", [])]
        call("set_context", {"text": f"{me} at {n}"})
        time.sleep(pause)
    conn.close()


def stdio_agent(proc: subprocess.Popen, me: str, nxt: str, stop: float, pause: float, out: dict) -> None:
    n = 0

    def rpc(method: str, params: dict | None = None, notify: bool = False) -> dict:
        nonlocal n
        n += 1
        msg = {"jsonrpc": "2.0", "method": method, **({"params": params} if params is not None else {})}
        if not notify:
            msg["id"] = n
        proc.stdin.write(json.dumps(msg) + "\n")
        proc.stdin.flush()
        if notify:
            return {}
        while True:
            doc = json.loads(proc.stdout.readline())
            if doc.get("id") == n:
                return doc

    rpc("initialize", {"protocolVersion": "2025-06-18", "capabilities": {},
                       "clientInfo": {"name": "bench_soak", "version": "0"}})
    rpc("notifications/initialized", notify=True)
    acked: list[str] = []
    while time.time() < stop:
        for name, arguments in (("send_message", {"recipient": nxt, "content": f"{me} {n}"}),
                                ("pulse", {"lease": 60, **({"ack": acked} if acked else {})}),
                                ("set_context", {"text": f"{me} at {n}"})):
            doc = rpc("tools/call", {"name": name, "arguments": arguments})
            out["calls"] += 1
            result = doc.get("result") or {}
            if "error" in doc or result.get("isError"):
                out["errors"] += 1
                out.setdefault("first_error", f"{name}: {str(doc)[:300]}")
            elif name == "pulse":
                acked = [m["id"] for m in (result.get("structuredContent") or {}).get("messages", [])]
        time.sleep(pause)


def chores(root: Path, repo: Path, stop: float, every: dict[str, float], out: dict) -> None:
    """Run prune, report and backup (each a `federation` process, as an operator would) until *stop*."""
    due = {name: time.time() + period for name, period in every.items()}
    n = 0
    while time.time() < stop:
        name = min(due, key=due.get)
        time.sleep(max(0.0, min(due[name], stop) - time.time()))
        if time.time() >= stop:
            break
        due[name] = time.time() + every[name]
        n += 1
        backup = root.parent / f"{root.name}-backup-{n}.db"
        argv = {"prune": ["prune", "--older-than", "1s"], "report": ["report"],
                "backup": ["backup", "--to", str(backup)]}[name]
        t0 = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "federation", *argv], capture_output=True, text=True,
                              env=child_env(repo), cwd=str(repo))
        took = time.monotonic() - t0
        backup.unlink(missing_ok=True)
        runs = out.setdefault(name, [])
        runs.append((done.returncode, took))
        if done.returncode != 0:
            out.setdefault(f"{name}_first_failure", (done.stdout + done.stderr)[-400:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=5)
    ap.add_argument("--agents", type=int, default=16, help="HTTP agents")
    ap.add_argument("--stdio", type=int, default=2, help="stdio servers (one agent each)")
    ap.add_argument("--every", type=float, default=10, help="seconds between samples")
    ap.add_argument("--phase", type=int, default=4, choices=[1, 2, 3, 4])
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--pause", type=float, default=0.05, help="seconds between an agent's ticks")
    ap.add_argument("--repo", type=Path, default=REPO, help="run the servers from this checkout")
    ap.add_argument("--pg-url", help="PostgreSQL database (default: SQLite)")
    ap.add_argument("--chores", action="store_true",
                    help="also dead letters (forgetful receivers), prune, report and backup during the traffic")
    ap.add_argument("--prune-every", type=float, default=15)
    ap.add_argument("--report-every", type=float, default=60)
    ap.add_argument("--backup-every", type=float, default=120)
    ap.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                    help="set in the servers' environment (e.g. MALLOC_ARENA_MAX=2, FEDERATION_SHADOW_SAMPLE=0)")
    ap.add_argument("--stdio-probe", action="store_true",
                    help="sample each stdio server's heaps from inside it (bench/_stdio_probe.py)")
    args = ap.parse_args()
    print(f"load average {open('/proc/loadavg').read().strip()}")
    from federation.apps import agent_tokens
    from federation import messaging

    with federation_env(args.phase, args.pg_url) as root:
        if args.chores:
            os.environ["FEDERATION_MAX_ATTEMPTS"] = "2"  # the servers' dead letters come quickly
        for item in args.env:
            name, _, value = item.partition("=")
            os.environ[name] = value
        http_names = [f"http-{i:03d}" for i in range(args.agents)]
        stdio_names = [f"stdio-{i:02d}" for i in range(args.stdio)]
        tokens = {name: agent_tokens.add(name, root)[0] for name in http_names}
        messaging.send_message(http_names[0], http_names[-1], "the database made before the servers start")
        extra = ("--workers", str(args.workers)) if args.workers > 1 else ()
        server, url = start_http(root.parent / f"{root.name}-soak.stderr", *extra, repo=args.repo)
        probes = {name: root.parent / f"{root.name}-{name}-probe.jsonl" for name in stdio_names}
        probe = str(Path(__file__).resolve().parent / "_stdio_probe.py")
        stdio = [subprocess.Popen([sys.executable, probe, str(probes[name]), name, str(args.every)]
                                  if args.stdio_probe else
                                  [sys.executable, "-m", "federation", "serve", "--agent", name],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=open(root.parent / f"{root.name}-{name}.stderr", "w"),
                                  env=child_env(args.repo), cwd=str(args.repo), text=True)
                 for name in stdio_names]
        out = {"calls": 0, "errors": 0}
        stop = time.time() + args.minutes * 60
        everyone = http_names + stdio_names
        threads = [threading.Thread(target=http_agent, args=(url, tokens[me], me, everyone[(i + 1) % len(everyone)],
                                                              stop, args.pause, out, args.chores and i % 4 == 3),
                                    daemon=True)
                   for i, me in enumerate(http_names)]
        threads += [threading.Thread(target=stdio_agent, args=(proc, me, everyone[(len(http_names) + i + 1)
                                                                                  % len(everyone)],
                                                               stop, args.pause, out), daemon=True)
                    for i, (proc, me) in enumerate(zip(stdio, stdio_names))]
        chores_out: dict = {}
        if args.chores:
            threads.append(threading.Thread(target=chores, args=(root, args.repo, stop, {
                "prune": args.prune_every, "report": args.report_every, "backup": args.backup_every}, chores_out),
                daemon=True))
        for t in threads:
            t.start()
        from federation import config

        db = None if args.pg_url else config.settings().db_path
        samples: list[dict] = []
        started = time.time()
        print(f"{'s':>5} {'calls':>8} {'http MB':>8} {'fds':>5} {'thr':>4} {'stdio MB':>9} {'db MB':>7} "
              f"{'wal MB':>7} {'control MB':>10}")
        while True:
            now = time.time()
            http = proc_sample(tree_pids(server.pid))
            std = proc_sample([p.pid for p in stdio])
            sample = {"t": now - started, "calls": out["calls"], "http_rss_mb": http["rss_mb"],
                      "http_fds": http["fds"], "http_threads": http["threads"], "stdio_rss_mb": std["rss_mb"],
                      "stdio_fds": std["fds"], "db_mb": size_mb(db) if db else 0.0,
                      "wal_mb": size_mb(Path(str(db) + "-wal")) if db and Path(str(db) + "-wal").exists() else 0.0,
                      "control_mb": size_mb(root / "control")}
            samples.append(sample)
            print(f"{sample['t']:5.0f} {sample['calls']:8d} {sample['http_rss_mb']:8.1f} {sample['http_fds']:5.0f} "
                  f"{sample['http_threads']:4.0f} {sample['stdio_rss_mb']:9.1f} {sample['db_mb']:7.2f} "
                  f"{sample['wal_mb']:7.2f} {sample['control_mb']:10.3f}", flush=True)
            if now >= stop:
                break
            time.sleep(min(args.every, max(0.0, stop - time.time())))
        for t in threads:
            t.join(30)
        server.terminate()
        server.wait(30)
        for proc in stdio:
            proc.stdin.close()
            proc.wait(30)
        half = [s for s in samples if s["t"] >= samples[-1]["t"] / 2]
        elapsed = samples[-1]["t"]
        print(f"{out['calls']} calls in {elapsed:.0f} s ({out['calls'] / max(elapsed, 1):.0f}/s), "
              f"{out['errors']} failed" + (f" (first: {out['first_error']})" if out["errors"] else ""))
        if args.chores:
            forgetful = [me for i, me in enumerate(http_names) if i % 4 == 3]
            dead = sum(len(messaging.dead_letters(me)) for me in forgetful)
            print(f"dead letters at the end: {dead} (of {len(forgetful)} forgetful receivers)")
        for name in ("prune", "report", "backup"):
            runs = chores_out.get(name, [])
            if runs:
                codes = {code: sum(1 for c, _ in runs if c == code) for code in sorted({c for c, _ in runs})}
                print(f"{name}: {len(runs)} runs, exit codes {codes}, longest {max(t for _, t in runs):.1f} s"
                      + (f" (first failure: {chores_out[name + '_first_failure']!r})"
                         if name + "_first_failure" in chores_out else ""))
        print("slope per hour over the second half (first -> last sample):")
        for key in ("http_rss_mb", "http_fds", "http_threads", "stdio_rss_mb", "stdio_fds", "db_mb", "wal_mb",
                    "control_mb"):
            slope = slope_per_hour([(s["t"], s[key]) for s in half])
            print(f"  {key:14} {samples[0][key]:9.2f} -> {samples[-1][key]:9.2f}   {slope:+10.2f} /h")
        if args.stdio_probe:
            print_probes(probes)
        print(f"load average {open('/proc/loadavg').read().strip()}")


def slope_se_per_hour(points: list[tuple[float, float]]) -> tuple[float, float]:
    """The least-squares slope per hour and its standard error."""
    n = len(points)
    if n < 3:
        return slope_per_hour(points), 0.0
    mt = sum(t for t, _ in points) / n
    mv = sum(v for _, v in points) / n
    var = sum((t - mt) ** 2 for t, _ in points)
    if var == 0:
        return 0.0, 0.0
    b = sum((t - mt) * (v - mv) for t, v in points) / var
    residual = sum((v - mv - b * (t - mt)) ** 2 for t, v in points)
    return b * 3600, (residual / (n - 2) / var) ** 0.5 * 3600


def print_probes(probes: dict[str, Path]) -> None:
    for name, path in probes.items():
        try:
            records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        except OSError:
            records = []
        if not records:
            print(f"{name}: no probe sample")
            continue
        half = [r for r in records if r["t"] >= records[-1]["t"] / 2]
        print(f"{name} (probe, {len(records)} samples; slope over the second half ± 2 standard errors):")
        for key in ("rss_mb", "anon_mb", "malloc_system_mb", "malloc_used_mb", "malloc_free_mb", "malloc_mmap_mb",
                    "pymalloc_arenas", "sqlite_mb", "gc_objects", "threads", "fds"):
            slope, se = slope_se_per_hour([(r["t"], r[key]) for r in half])
            print(f"  {key:17} {records[0][key]:10.2f} -> {records[-1][key]:10.2f}   {slope:+10.2f} ± {2 * se:.2f} /h")
        for key in sorted(records[-1].get("anon_by_mapping", {})):
            points = [(r["t"], r["anon_by_mapping"][key]) for r in half if key in r.get("anon_by_mapping", {})]
            slope, se = slope_se_per_hour(points)
            first = records[0].get("anon_by_mapping", {}).get(key, 0.0)
            print(f"  anon {key:12} {first:10.2f} -> {records[-1]['anon_by_mapping'][key]:10.2f}   "
                  f"{slope:+10.2f} ± {2 * se:.2f} /h")
        for key in sorted(set(records[0].get("caches", {})) | set(records[-1].get("caches", {}))):
            series = [r.get("caches", {}).get(key, 0) for r in records]
            print(f"  entries of {key:20} {series[0]} -> {series[-1]} (most {max(series)})")


if __name__ == "__main__":
    main()
