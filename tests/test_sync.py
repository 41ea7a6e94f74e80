"""``federation sync`` under live dual-phase writes, with real processes.

Agents vote, send (and claim) messages and set their context through the
shim in phase 2 (files authoritative) or phase 3 (the database authoritative)
while another process runs ``sync`` over and over towards the shadow side.
The dual-write keeps both sides equal under each record's file lock, so a
correct sync finds nothing to repair; it must never remove, revert or
resurrect anything a writer was told succeeded.  The drift repairs
themselves are tested in ``test_report.py``.
"""

from __future__ import annotations

import json
import time

from federation import config, core, governance, rollout
from federation.stores.files import Tree
from federation.domain.generate import generate
from federation.transfer.rows import (TABLES, document_file, document_owner, read_db, read_db_documents,
                                      read_files, read_tree)
from federation.domain.entities import MESSAGES, document_lock
from federation.transfer.migrate import migrate
from federation.transfer.report import build_report

from _transfer_helpers import cli

#: One agent's loop until the stop file appears; prints what was acknowledged (the last stdout line).
WRITER = """
import json, os, sys
from federation import context, governance, messaging
kind, name, poll, stop = sys.argv[1:5]
acked = []
i = 0
while not os.path.exists(stop):
    if kind == "vote":
        voter = f"{name}-{i}"
        governance.vote(poll, voter, "yes" if i % 2 else "no")
        acked.append(voter)
    elif kind == "send":
        acked.append(messaging.send_message(name, "bob", f"{name} says {i}"))
    elif kind == "context":
        context.set_context(name, f"{name} text {i}")
        acked.append(f"{name} text {i}")
    elif kind == "claim":
        acked += [m["id"] for m in messaging.check_inbox("bob")]
    i += 1
print(json.dumps(acked))
"""

#: `sync --to TO` over and over until the stop file appears; prints each run's changes and how many documents
#: the report listed that agreed once re-read under their lock (a write was in flight).
SYNCER = """
import json, os, sys
from federation import config, rollout
from federation.transfer.sync import sync
to, stop = sys.argv[1:3]
runs = []
while not os.path.exists(stop):
    result = sync(to, phase=rollout.fleet_phase(config.settings()), settings=config.settings())
    runs.append({"changes": [[c.action, c.target, c.key] for c in result.changes],
                 "settled": getattr(result, "settled", 0)})
print(json.dumps(runs))
"""

#: Until the stop file appears, compare both sides of the poll and of bob's inbox while holding their file
#: locks, as the shim's dual-write does: under the lock the sides must always agree.  Prints the disagreements.
MONITOR = """
import json, os, sys, time
from federation import config, core
from federation.stores.sqlstore import get_store
poll, stop = sys.argv[1:3]
store, tree = get_store(config.settings()), core.tree()
seen = {"checks": 0, "votes": [], "messages": []}
while not os.path.exists(stop):
    with core.file_lock("polls"):
        files = json.loads(tree.polls_file.read_text())[poll]["votes"]
        db = store.load_poll(poll)["votes"]
    if files != db:
        seen["votes"].append(sorted(set(files.items()) ^ set(db.items()))[:5])
    with core.file_lock("inbox-bob"):
        inbox = tree.inbox("bob")
        files = {n[:-5] for n in os.listdir(inbox) if n.endswith(".json")} if inbox.is_dir() else set()
        db = {m["id"] for m in store.load_inbox("bob")}
    if files != db:
        seen["messages"].append({"only_in_files": sorted(files - db)[:5], "only_in_db": sorted(db - files)[:5]})
    seen["checks"] += 1
    time.sleep(0.01)
print(json.dumps(seen))
"""

WRITE_SECONDS = 6.0


def _last_json(proc) -> object:
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])  # structlog left unconfigured may print before it


def _race(fed, phase: int, to: str, writers: list[tuple[str, str]]) -> tuple[dict, list]:
    """Run *writers* ``(kind, name)`` pinned to *phase* beside a `sync --to TO` loop and the MONITOR; stop
    the sync loop first (so its last run overlapped live writes), then the writers.  The monitor must never
    have seen the sides disagree under their locks.  Returns ({name: acknowledged}, the sync runs' changes)."""
    generate(fed.root, agents=6, messages=300, polls=3, sessions=2)  # a tree whose read takes a while
    assert migrate(settings=config.settings()).exit_code == 0
    fed.phase(phase)
    poll = governance.create_poll("lead", "Ship it?", ["yes", "no"])
    assert build_report(settings=config.settings()).consistent
    stop_sync, stop_writers = fed.root.parent / "stop-sync", fed.root.parent / "stop-writers"
    procs = {name: fed.spawn(WRITER, kind, name, poll, str(stop_writers), phase=phase) for kind, name in writers}
    monitor = fed.spawn(MONITOR, poll, str(stop_writers))
    syncer = fed.spawn(SYNCER, to, str(stop_sync))
    try:
        time.sleep(WRITE_SECONDS)
    finally:
        stop_sync.touch()
        runs = _last_json(syncer)
        stop_writers.touch()
        acked = {name: _last_json(p) for name, p in procs.items()}
        seen = _last_json(monitor)
    acked["poll"] = poll
    assert seen["checks"] >= 10, seen
    assert not seen["votes"] and not seen["messages"], (
        f"under their locks the sides disagreed {len(seen['votes'])} times on the votes and "
        f"{len(seen['messages'])} times on the inbox (of {seen['checks']} checks); first: "
        f"{(seen['votes'] + seen['messages'])[:3]}")
    return acked, runs


def _file_votes(fed, poll: str) -> dict:
    return json.loads((fed.root / "shared" / "polls.json").read_text())[poll]["votes"]


def _file_inbox(fed, agent: str) -> set[str]:
    inbox = fed.root / "nodes" / agent / "inbox"
    return {json.loads(p.read_text())["id"] for p in inbox.glob("*.json")} if inbox.is_dir() else set()


def _file_context(fed, agent: str) -> str:
    return json.loads((fed.root / "nodes" / agent / "context_window.json").read_text())["text"]


def _check_acknowledged(fed, acked: dict, voters: list[str], senders: list[str], claimers: list[str],
                        writers: list[str]) -> None:
    store = fed.store()
    poll = acked["poll"]
    cast = {v for name in voters for v in acked[name]}
    assert len(cast) > 20, "too little traffic to say anything"
    for side, votes in (("files", _file_votes(fed, poll)), ("db", store.load_poll(poll)["votes"])):
        missing = sorted(cast - set(votes))
        assert not missing, f"{len(missing)} acknowledged votes missing in {side}: {missing[:5]}"
    sent = [m for name in senders for m in acked[name]]
    claimed = [m for name in claimers for m in acked[name]]
    assert len(claimed) == len(set(claimed)), "a message was delivered twice"
    unread = set(sent) - set(claimed)
    assert set(claimed) <= set(sent)
    for side, inbox in (("files", _file_inbox(fed, "bob")), ("db", {m["id"] for m in store.load_inbox("bob")})):
        assert not unread - inbox, f"{len(unread - inbox)} acknowledged unread messages missing in {side}"
        assert not inbox & set(claimed), f"{len(inbox & set(claimed))} claimed messages unread again in {side}"
    for name in writers:
        last = acked[name][-1]
        assert _file_context(fed, name) == last and store.load_context(name)["text"] == last, name


def _check_runs(runs: list[dict]) -> None:
    """The dual-write leaves nothing to repair, so every candidate of the unlocked report was a write in
    flight: settled under its lock, never changed.  Some were (the race was really run)."""
    changed = [c for run in runs for c in run["changes"]]
    assert changed == [], f"{len(changed)} changes by sync under live writes, first: {changed[:5]}"
    assert sum(run["settled"] for run in runs) > 0, "no sync run met a write in flight"


def test_sync_to_db_under_live_phase2_writes_loses_nothing(fed):
    """Phase 2 (files first, then the database): 2 voters, 2 senders and a context writer beside a
    `sync --to db` loop.  No acknowledged vote, message or context is missing or stale on either side
    at the end, `report` agrees, and no sync run found anything to change (the dual-write leaves
    nothing to repair; a change would come from a stale snapshot)."""
    writers = [("vote", "v1"), ("vote", "v2"), ("send", "alice"), ("send", "carol"), ("context", "dave")]
    acked, runs = _race(fed, 2, "db", writers)
    assert len(runs) >= 3, f"only {len(runs)} sync runs overlapped the writes"
    _check_acknowledged(fed, acked, ["v1", "v2"], ["alice", "carol"], [], ["dave"])
    assert cli(fed, "report").returncode == 0
    _check_runs(runs)


def test_sync_to_files_under_live_phase3_writes_loses_nothing(fed):
    """Phase 3 (the database first, then the files): 2 voters, 2 senders, a claimer of the recipients' inbox
    and a context writer beside a `sync --to files` loop.  No acknowledged vote or unread message is missing
    on either side, no claimed message is unread again in the files, `report` agrees, and no sync run found
    anything to change."""
    writers = [("vote", "v1"), ("vote", "v2"), ("send", "alice"), ("send", "carol"), ("claim", "bob"),
               ("context", "dave")]
    acked, runs = _race(fed, 3, "files", writers)
    assert len(runs) >= 3, f"only {len(runs)} sync runs overlapped the writes"
    _check_acknowledged(fed, acked, ["v1", "v2"], ["alice", "carol"], ["bob"], ["dave"])
    assert cli(fed, "report").returncode == 0
    _check_runs(runs)


def test_sync_takes_the_lock_the_shim_holds_for_every_table():
    """For a record of each of the tables, the lock sync repairs it under is the lock every shim write
    of that table holds across both sides (core.SHIM_SPEC)."""
    rows = {"messages": ("m1", "alice", "bob", "hi", "task", None, "t"), "context": ("dave", "", None, None),
            "expertise": ("dave", "go", None), "profiles": ("dave", None, "{}", None),
            "polls": ("p1", "Q?", "[]", "open", "lead", "t"), "votes": ("p1", "erin", "yes"),
            "sessions": ("s1", "T", None, "lead", "planning", "t", None),
            "session_roles": ("s1", "erin", "dev", None, None), "session_artifacts": ("s1", "spec", "x", None),
            "session_reviews": ("s1", "spec", "erin", "approved", None, None),
            "tasks": ("t1", "T", None, "lead", None, "[]", "open", None, None, 0, None, None, "t", None)}
    assert set(rows) == {t.name for t in TABLES}
    for table in TABLES:
        row = rows[table.name]
        record = MESSAGES.from_row(row) if table is MESSAGES else {"id": row[0]}
        writes = [(name, spec) for name, spec in core.SHIM_SPEC.items()
                  if name.startswith("save_") and spec.get("entity") == table.name and spec.get("lock")]
        assert writes, table.name
        for name, spec in writes:
            first = {"save_messages": [record], "save_keyed_messages": [record]}.get(name, record if name in ("save_message", "save_poll",
                                                                               "save_session") else row[0])
            locks = spec["lock"](first)  # one name, or a list of names (a broadcast's inboxes)
            assert ([locks] if isinstance(locks, str) else list(locks)) == \
                [document_lock(table.document, document_owner(table, row))], name


def test_one_document_read_equals_the_whole_read(fed):
    """What sync re-reads under a lock (one document's files, its database rows) is exactly that document's
    part of the whole tree and database that the report reads."""
    generate(fed.root, agents=4, messages=30, polls=3, sessions=2)
    assert migrate(settings=config.settings()).exit_code == 0
    tree, store = Tree(fed.root), fed.store()
    whole_files, whole_db = read_tree(fed.root).rows, read_db(store)
    docs = {(t.document, str(k[0])): document_owner(t, row) for t in TABLES for k, row in whole_files[t.name].items()}
    assert {kind for kind, _ in docs} == {"message", "context", "expertise", "profile", "polls", "session", "task"}
    for (kind, doc_id), owner in docs.items():
        part = read_files(tree, [document_file(tree, kind, doc_id, owner)])
        rows = store.db.read(lambda tx: read_db_documents(tx, [(kind, doc_id)]))
        for t in TABLES:
            if t.document != kind:
                assert not rows[t.name]
                continue
            mine = {k: r for k, r in whole_files[t.name].items() if str(k[0]) == doc_id}
            assert {k: r for k, r in part.rows[t.name].items() if str(k[0]) == doc_id} == mine, (kind, doc_id)
            assert rows[t.name] == {k: r for k, r in whole_db[t.name].items() if str(k[0]) == doc_id}
            assert rows[t.name] == mine  # migrated: the two sides agree
