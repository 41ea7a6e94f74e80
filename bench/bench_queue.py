"""Delivery against the queue it is measured by (issue 27): the federation beside pgmq on one PostgreSQL.

pgmq (the PostgreSQL queue whose visibility timeout, read count and delete are the anchor for
leases and acks) is loaded as plain SQL from ``../shared/peers/pgmq/pgmq.sql`` (``--pgmq-sql``;
see ``../shared/peers/README.md``) into the same throwaway server (tests/pgserver.py; fsync off)
as the federation's database.  Phase 4 (the database only), one recipient, medians of
``--rounds`` interleaved rounds (federation, pgmq, federation, pgmq, ...; the order alternates):

- send: ``--messages`` messages sent one per call: ``messaging.send_message`` vs ``pgmq.send``;
- receive: ``--messages`` waiting messages taken ``--batch`` at a time until none is left:
  ``receive(limit=batch)`` + ``ack`` vs ``pgmq.read(qty=batch)`` + ``pgmq.delete``;
- 4 receivers: the same loop in ``--receivers`` processes started together on ``2 x --messages``
  waiting messages; every message must be taken exactly once (checked, on both sides);
- inside the project, SQLite and PostgreSQL: ``receive(limit=batch)`` + ``ack`` until empty vs
  one ``check_inbox`` of the same ``--messages`` (claim = read at once).

Without pgmq's SQL the pgmq rows are skipped with a message; the rest still runs.

    python bench/bench_queue.py [--messages 10000] [--batch 100] [--receivers 4] [--rounds 3]
                                [--pg-url URL] [--pgmq-sql PATH]
"""

from __future__ import annotations

from federation import config

import argparse
import json
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from _common import federation_env, postgres_url

HERE = Path(__file__).resolve().parent
PGMQ_SQL = Path("shared") / "peers" / "pgmq" / "pgmq.sql"
QUEUE = "bench"
LEASE = 60


def default_pgmq_sql() -> Path:
    """``../shared/peers/pgmq/pgmq.sql`` from the project's root; in a git worktree elsewhere, from the
    main checkout's root (the worktree's ``../shared`` is not the project's)."""
    root = HERE.parent
    candidates = [root.parent / PGMQ_SQL]
    try:
        common = subprocess.run(["git", "-C", str(root), "rev-parse", "--path-format=absolute", "--git-common-dir"],
                                capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        common = ""
    if common:
        candidates.append(Path(common).parent.parent / PGMQ_SQL)
    return next((c for c in candidates if c.is_file()), candidates[0])


# -- the federation ---------------------------------------------------------------------------
def _fed_reset() -> None:
    from federation.stores.sqlstore import get_store

    store = get_store(config.settings())
    tables = ("messages", "message_history", "idempotency_keys")
    if store.db.dialect.name == "postgresql":  # as pgmq.purge_queue does: no dead rows left behind
        store.db.write(lambda tx: tx.execute(f"TRUNCATE {', '.join(tables)}"))
    else:
        store.db.write(lambda tx: [tx.execute(f"DELETE FROM {t}") for t in tables])


def _fed_fill(n: int) -> list[str]:
    """*n* messages waiting in bob's inbox, written in batches through the store (untimed)."""
    from federation.domain.clock import new_id, now
    from federation.stores.sqlstore import get_store

    store = get_store(config.settings())
    ids = []
    for start in range(0, n, 1000):
        batch = [{"id": new_id(), "sender": "alice", "recipient": "bob", "content": f"message {i}",
                  "message_type": "task", "reply_to": None, "timestamp": now()}
                 for i in range(start, min(n, start + 1000))]
        store.save_messages(batch)
        ids += [m["id"] for m in batch]
    return ids


def fed_send(n: int) -> float:
    from federation import messaging

    _fed_reset()
    t0 = time.perf_counter()
    for i in range(n):
        messaging.send_message("alice", "bob", f"message {i}")
    elapsed = time.perf_counter() - t0
    assert len(messaging.peek_inbox("bob")) == n
    return n / elapsed


def _fed_drain(batch: int) -> list[str]:
    from federation import messaging

    taken = []
    while True:
        got = messaging.receive("bob", lease=LEASE, limit=batch)
        if not got:
            return taken
        ids = [m["id"] for m in got]
        if len(messaging.ack("bob", ids)) != len(ids):
            raise SystemExit("federation: an ack acknowledged fewer messages than were received")
        taken += ids


def fed_receive(n: int, batch: int) -> float:
    _fed_reset()
    sent = _fed_fill(n)
    t0 = time.perf_counter()
    taken = _fed_drain(batch)
    elapsed = time.perf_counter() - t0
    _once("federation", sent, taken)
    return n / elapsed


def fed_check_inbox(n: int) -> float:
    from federation import messaging

    _fed_reset()
    sent = _fed_fill(n)
    t0 = time.perf_counter()
    got = messaging.check_inbox("bob")
    elapsed = time.perf_counter() - t0
    _once("federation check_inbox", sent, [m["id"] for m in got])
    return n / elapsed


def _fed_child(batch: int) -> list[str]:
    from federation.stores.sqlstore import forget_stores

    forget_stores()  # never the parent's connections
    return _fed_drain(batch)


def fed_receivers(n: int, batch: int, procs: int) -> float:
    _fed_reset()
    sent = _fed_fill(n)
    seconds, taken = _in_processes(procs, lambda: _fed_child(batch))
    _once(f"federation, {procs} receivers", sent, taken)
    return n / seconds


# -- pgmq ---------------------------------------------------------------------------------------
def _pg(url: str):
    import psycopg

    return psycopg.connect(url, autocommit=True)


def pgmq_load(url: str, sql_path: Path) -> None:
    with _pg(url) as conn:
        if conn.execute("SELECT to_regnamespace('pgmq')").fetchone()[0] is None:
            conn.execute(sql_path.read_text())
        conn.execute("SELECT pgmq.create(%s)", (QUEUE,))


def _pgmq_reset(conn) -> None:
    conn.execute("SELECT pgmq.purge_queue(%s)", (QUEUE,))


def _payload(i: int) -> str:
    return json.dumps({"sender": "alice", "recipient": "bob", "content": f"message {i}", "message_type": "task"})


def _pgmq_fill(conn, n: int) -> list[int]:
    ids = []
    for start in range(0, n, 1000):
        rows = conn.execute("SELECT * FROM pgmq.send_batch(%s, %s::jsonb[])",
                            (QUEUE, [_payload(i) for i in range(start, min(n, start + 1000))])).fetchall()
        ids += [r[0] for r in rows]
    return ids


def pgmq_send(url: str, n: int) -> float:
    with _pg(url) as conn:
        _pgmq_reset(conn)
        t0 = time.perf_counter()
        for i in range(n):
            conn.execute("SELECT * FROM pgmq.send(%s, %s::jsonb)", (QUEUE, _payload(i))).fetchall()
        elapsed = time.perf_counter() - t0
        assert conn.execute(f"SELECT count(*) FROM pgmq.q_{QUEUE}").fetchone()[0] == n
    return n / elapsed


def _pgmq_drain(conn, batch: int) -> list[int]:
    taken = []
    while True:
        rows = conn.execute("SELECT msg_id, read_ct, message FROM pgmq.read(%s, %s, %s)",
                            (QUEUE, LEASE, batch)).fetchall()
        if not rows:
            return taken
        ids = [r[0] for r in rows]
        deleted = conn.execute("SELECT * FROM pgmq.delete(%s, %s::bigint[])", (QUEUE, ids)).fetchall()
        if len(deleted) != len(ids):
            raise SystemExit("pgmq: a delete removed fewer messages than were read")
        taken += ids


def pgmq_receive(url: str, n: int, batch: int) -> float:
    with _pg(url) as conn:
        _pgmq_reset(conn)
        sent = _pgmq_fill(conn, n)
        t0 = time.perf_counter()
        taken = _pgmq_drain(conn, batch)
        elapsed = time.perf_counter() - t0
    _once("pgmq", sent, taken)
    return n / elapsed


def _pgmq_child(url: str, batch: int) -> list[int]:
    with _pg(url) as conn:
        return _pgmq_drain(conn, batch)


def pgmq_receivers(url: str, n: int, batch: int, procs: int) -> float:
    with _pg(url) as conn:
        _pgmq_reset(conn)
        sent = _pgmq_fill(conn, n)
    seconds, taken = _in_processes(procs, lambda: _pgmq_child(url, batch))
    _once(f"pgmq, {procs} receivers", sent, taken)
    return n / seconds


# -- shared -------------------------------------------------------------------------------------
def _once(label: str, sent: list, taken: list) -> None:
    """Every message taken exactly once, or the benchmark stops: a fast wrong answer is no figure."""
    if len(taken) != len(set(taken)) or set(taken) != set(sent):
        raise SystemExit(f"{label}: {len(sent)} sent, {len(taken)} taken, {len(set(taken))} different, "
                         f"{len(set(sent) - set(taken))} never taken")


def _in_processes(n: int, work: Callable[[], list]) -> tuple[float, list]:
    """Run *work* in *n* forked processes released together; (wall seconds, everything they took)."""
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(n + 1)
    results = ctx.Queue()

    def child() -> None:
        barrier.wait()
        results.put(work())

    procs = [ctx.Process(target=child) for _ in range(n)]
    for p in procs:
        p.start()
    barrier.wait()
    t0 = time.perf_counter()
    taken: list = []
    for _ in procs:
        taken += results.get(timeout=600)
    elapsed = time.perf_counter() - t0
    for p in procs:
        p.join(60)
    bad = [p.exitcode for p in procs if p.exitcode != 0]
    if bad:
        raise SystemExit(f"a receiver process failed: exit codes {bad}")
    return elapsed, taken


def interleaved(rounds: int, a: Callable[[], float], b: Callable[[], float]) -> tuple[float, float]:
    """Medians of *rounds* rounds of a and b run in turn (b first every other round)."""
    ra, rb = [], []
    for r in range(rounds):
        if r % 2:
            rb.append(b())
            ra.append(a())
        else:
            ra.append(a())
            rb.append(b())
    return statistics.median(ra), statistics.median(rb)


def row(label: str, fed: float, other: float, target: float | None) -> None:
    ratio = fed / other
    verdict = "" if target is None else f"  (target >= {target}x: {'met' if ratio >= target else 'MISSED'})"
    print(f"  {label:44} {fed:>9,.0f} {other:>9,.0f} {ratio:>6.2f}x{verdict}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=10_000)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--receivers", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--pg-url", help="an empty PostgreSQL database to use (default: a throwaway server)")
    ap.add_argument("--pgmq-sql", type=Path, default=None,
                    help="pgmq's SQL (default: ../shared/peers/pgmq/pgmq.sql from the project's root)")
    ap.add_argument("--only", choices=("pgmq", "inside"), help="run one part only")
    args = ap.parse_args()
    if args.pgmq_sql is None:
        args.pgmq_sql = default_pgmq_sql()
    n, batch, k = args.messages, args.batch, args.receivers
    print(f"load average at start: {open('/proc/loadavg').read().split()[:3]}  (cores: {os.cpu_count()})")
    print(f"phase 4, one recipient, {n:,} messages, batch {batch}, medians of {args.rounds} interleaved rounds, msgs/s")

    with postgres_url(args.pg_url) as url:
        if args.only != "inside":
            if not args.pgmq_sql.is_file():
                print(f"pgmq rows skipped: {args.pgmq_sql} is not there (see ../shared/peers/README.md)")
            else:
                pgmq_load(url, args.pgmq_sql)
                print(f"  {'PostgreSQL: federation vs pgmq':44} {'federation':>9} {'pgmq':>9} {'ratio':>7}")
                with federation_env(4, url):
                    fed_send(10)  # the schema, the connection: not part of any round
                    f, q = interleaved(args.rounds, lambda: fed_send(n), lambda: pgmq_send(url, n))
                    row("send, one message per call", f, q, 0.8)
                    f, q = interleaved(args.rounds, lambda: fed_receive(n, batch), lambda: pgmq_receive(url, n, batch))
                    row(f"receive({batch})+ack vs read({batch})+delete", f, q, 1.0)
                    f, q = interleaved(args.rounds, lambda: fed_receivers(2 * n, batch, k),
                                       lambda: pgmq_receivers(url, 2 * n, batch, k))
                    row(f"{k} receivers, {2 * n:,} messages, each once", f, q, 0.8)
        if args.only != "pgmq":
            print(f"  {'inside the project':44} {'recv+ack':>9} {'check':>9} {'ratio':>7}")
            for engine, db_url in (("SQLite", None), ("PostgreSQL", url)):
                with federation_env(4, db_url):
                    fed_send(10)
                    f, c = interleaved(args.rounds, lambda: fed_receive(n, batch), lambda: fed_check_inbox(n))
                    row(f"{engine}: receive({batch})+ack vs check_inbox", f, c, 0.5)
    print(f"load average at end: {open('/proc/loadavg').read().split()[:3]}")


if __name__ == "__main__":
    main()
