"""check_inbox of a 10,000-message inbox: the indexed SQL claim against the legacy glob-read-delete.

    python bench/bench_inbox.py [--messages 10000] [--rounds 3]

Both paths are measured in this run; the inbox is filled (untimed) before each round.
"""

from __future__ import annotations

from federation import config

import argparse
import json
import os
import time

from _common import federation_env


def legacy_glob_read_delete(inbox) -> list[dict]:
    """The legacy code path, as deployments run it today: glob, read, delete, no lock."""
    out = []
    for path in sorted(inbox.glob("*.json")):
        out.append(json.loads(path.read_text()))
        path.unlink()
    return out


def one_round(phase: int, messages: int, db_url: str | None = None, literal_legacy: bool = False) -> float:
    from federation import core, messaging
    from federation.domain.clock import new_id, now

    with federation_env(phase, db_url):
        batch = [{"id": new_id(), "sender": "alice", "recipient": "bob", "content": f"message {i}",
                  "message_type": "task", "reply_to": None, "timestamp": now()} for i in range(messages)]
        if phase == 1:
            for m in batch:
                core.save_message(m)
        else:
            from federation.stores.sqlstore import get_store

            store = get_store(config.settings())
            store.db.write(lambda tx: tx.executemany(
                "INSERT INTO messages (id, sender, recipient, content, message_type, reply_to, timestamp) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)", [tuple(m.values()) for m in batch]))
            # other agents' traffic, so the index has work to do
            store.db.write(lambda tx: tx.executemany(
                "INSERT INTO messages (id, sender, recipient, content, message_type, reply_to, timestamp) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(new_id(), "alice", f"agent-{i % 50}", "x", "task", None, now()) for i in range(messages)]))
        t0 = time.perf_counter()
        if literal_legacy:
            got = legacy_glob_read_delete(core.tree().inbox("bob"))
        else:
            got = messaging.check_inbox("bob")
        elapsed = time.perf_counter() - t0
        assert len(got) == messages, len(got)
        assert messaging.check_inbox("bob") == []
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--pg-url", default=os.environ.get("FEDERATION_BENCH_PG_URL"))
    args = ap.parse_args()
    literal = min(one_round(1, args.messages, literal_legacy=True) for _ in range(args.rounds))
    legacy = min(one_round(1, args.messages) for _ in range(args.rounds))
    sql = min(one_round(4, args.messages) for _ in range(args.rounds))
    print(f"check_inbox of {args.messages} messages (best of {args.rounds})")
    print(f"legacy code: glob, read, delete:     {literal * 1000:9.1f} ms")
    print(f"file path with its lock (phase 1):   {legacy * 1000:9.1f} ms")
    print(f"SQL claim, SQLite (phase 4):         {sql * 1000:9.1f} ms   "
          f"{literal / sql:.1f}x faster than the legacy code, {legacy / sql:.1f}x than phase 1")
    if args.pg_url:
        pg = min(one_round(4, args.messages, args.pg_url) for _ in range(args.rounds))
        print(f"SQL claim, PostgreSQL (phase 4):     {pg * 1000:9.1f} ms   "
              f"{literal / pg:.1f}x faster than the legacy code, {legacy / pg:.1f}x than phase 1")


if __name__ == "__main__":
    main()
