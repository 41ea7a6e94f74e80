"""``federation prune``: only old read messages and old history go, in every phase, while agents keep working."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone

import pytest

from federation import config, core, governance, messaging
from federation.errors import ValidationError
from federation.operations.prune import parse_duration, prune
from federation.transfer.report import build_report

OLD = "2020-01-01T00:00:00.000000+00:00"


def _scenario(fed) -> dict:
    """Written in phase 3 (both sides): read, unread, old and new messages; history; an open and a closed poll."""
    fed.phase(3)
    read = [messaging.send_message("alice", "bob", f"read {n}") for n in range(6)]
    assert len(messaging.check_inbox("bob")) == 6
    unread = [messaging.send_message("carol", "bob", f"unread {n}") for n in range(4)]
    open_poll = governance.create_poll("alice", "Open?", ["yes", "no"])
    closed_poll = governance.create_poll("alice", "Closed?", ["yes", "no"])
    governance.vote(open_poll, "bob", "yes")
    governance.close_poll(closed_poll, "alice")
    db = fed.store().db
    # Age some rows: three read long ago, two unread sent long ago (they must stay), old history.
    db.write(lambda tx: tx.execute(f"UPDATE messages SET read_at = ? WHERE id IN ({', '.join('?' * 3)})",
                                   (OLD, *read[:3])))
    db.write(lambda tx: tx.execute("UPDATE messages SET timestamp = ? WHERE id IN (?, ?)", (OLD, *unread[:2])))
    for mid in unread[:2]:  # and in their files: both sides agree
        path = core.tree().message_file("bob", mid)
        path.write_text(json.dumps({**json.loads(path.read_text()), "timestamp": OLD}))
    old_history = db.write(lambda tx: tx.execute(
        "UPDATE message_history SET timestamp = ? WHERE message_id IN (?, ?, ?, ?)", (OLD, *read[:4])).rowcount)
    assert old_history == 4
    return {"read": read, "unread": unread, "polls": (open_poll, closed_poll)}


@pytest.mark.parametrize("phase", [1, 2, 3, 4])
def test_prune_removes_only_old_read_messages_and_old_history_and_report_agrees(fed, phase):
    """Old read messages and old history go; unread (even old) messages, polls and votes stay; report agrees."""
    s = _scenario(fed)
    fed.phase(phase)
    before = build_report(settings=config.settings())
    assert before.consistent, before.to_json()
    store = fed.store()
    counts = store.counts()

    dry = prune("30d", dry_run=True, settings=config.settings())
    assert dry.removed == {"messages": 3, "message_history": 4, "tasks": 0}
    assert store.counts() == counts  # a dry run changes nothing

    result = prune("30d", batch_size=2, settings=config.settings())  # tiny batches: the key walk crosses many of them
    assert result.removed == {"messages": 3, "message_history": 4, "tasks": 0} and not result.dry_run
    after = store.counts()
    assert after["messages"] == counts["messages"] - 3
    assert after["message_history"] == counts["message_history"] - 4
    assert {k: v for k, v in after.items() if k not in ("messages", "message_history")} == \
        {k: v for k, v in counts.items() if k not in ("messages", "message_history")}
    left = {r[0] for r in store.db.fetchall("SELECT id FROM messages")}
    assert left == set(s["read"][3:]) | set(s["unread"])
    assert build_report(settings=config.settings()).consistent  # in every phase: pruned rows never had a file
    open_poll, closed_poll = s["polls"]
    assert governance.get_poll(open_poll)["votes"] == {"bob": "yes"}
    assert governance.get_poll(closed_poll)["status"] == "closed"
    if phase > 1:
        assert sorted(m["content"] for m in messaging.peek_inbox("bob")) == [f"unread {n}" for n in range(4)]
    assert prune("30d", settings=config.settings()).removed == {"messages": 0, "message_history": 0, "tasks": 0}  # idempotent


def test_prune_without_a_database_creates_none(fed):
    """Phase 1 with no database file: nothing to prune, and the file is not created."""
    fed.phase(1)
    messaging.send_message("alice", "bob", "files only")
    if fed.engine == "sqlite":
        assert not fed.db_path.exists()
    assert prune("1s", settings=config.settings()).removed == {"messages": 0, "message_history": 0, "tasks": 0}
    if fed.engine == "sqlite":
        assert not fed.db_path.exists()
    # On both engines the files are untouched: the unread message is still there to claim.
    assert [m["content"] for m in messaging.check_inbox("bob")] == ["files only"]


@pytest.mark.parametrize("text, seconds", [("30d", 30 * 86400), ("12h", 43200), ("90m", 5400), ("2w", 1209600),
                                           ("45s", 45), (" 7D ", 7 * 86400)])
def test_durations(text, seconds):
    """Durations are a whole number and a unit."""
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("bad", ["0", "-1d", "soon", "0d", "1.5d", "d", "", "30 days", "99999999999999999999d"])
def test_bad_durations_are_refused(bad):
    """Zero, negative, unit-less or unknown durations are a ValidationError."""
    with pytest.raises(ValidationError):
        parse_duration(bad)


def _cli(fed, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "federation", *args], env=fed.subprocess_env(), capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize("bad", ["0", "-1d", "soon"])
def test_cli_refuses_bad_durations_with_exit_2_and_changes_nothing(fed, bad):
    """`prune --older-than 0|-1d|soon`: a clear error naming the value, exit 2, every row kept."""
    _scenario(fed)
    counts = fed.store().counts()
    proc = _cli(fed, "prune", f"--older-than={bad}", "--json")
    assert proc.returncode == 2, proc.stderr
    assert "--older-than" in proc.stderr and repr(bad) in proc.stderr and proc.stdout == ""
    assert fed.store().counts() == counts


def test_cli_json_shape(fed):
    """`prune --json` prints {"dry_run", "removed": {table: n}}."""
    _scenario(fed)
    dry = json.loads(_cli(fed, "prune", "--dry-run", "--json").stdout)
    assert dry["dry_run"] is True and dry["removed"] == {"messages": 3, "message_history": 4, "tasks": 0}
    done = _cli(fed, "prune", "--older-than", "30d", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["removed"] == {"messages": 3, "message_history": 4, "tasks": 0}


AGENT = """
import json, os, sys, time
from federation import messaging
from federation.errors import FederationError
me, peer, stop = sys.argv[1], sys.argv[2], sys.argv[3]
sent, received, errors = [], [], []
print("ready", flush=True)
while not os.path.exists(stop):
    try:
        sent.append(messaging.send_message(me, peer, f"{me} {len(sent)}"))
        received += [m["id"] for m in messaging.check_inbox(me)]
    except FederationError as exc:
        errors.append(f"{type(exc).__name__}: {exc}")
    time.sleep(0.002)
open(f"{stop}.{me}", "w").close()  # this agent sends no more
while len([n for n in os.listdir(os.path.dirname(stop)) if n.startswith(os.path.basename(stop) + ".")]) < 4:
    time.sleep(0.01)
received += [m["id"] for m in messaging.check_inbox(me)]  # every peer has stopped: drain what is left
print(json.dumps({"sent": sent, "received": received, "errors": errors}), flush=True)
"""


def test_prune_of_a_large_database_while_agents_send_and_claim(fed, tmp_path):
    """30,000 bulk messages: only old read rows go while 4 agent processes send and claim; nothing lost."""
    fed.phase(4)
    store = fed.store()
    store.db.ensure_schema()
    recent = datetime.now(timezone.utc).isoformat(timespec="microseconds")
    rows, history = [], []
    for n in range(30_000):
        kind = n % 6
        read_at = OLD if kind < 4 else (recent if kind == 4 else None)  # 4/6 old read, 1/6 recent, 1/6 unread
        rows.append((f"bulk{n:06d}", f"user{n % 50}", "sender", "x" * 40, "task", None, OLD, read_at))
    for n in range(10_000):
        history.append(("sent", "sender", f"user{n % 50}", "x" * 40, "task", OLD if n % 2 else recent, f"h{n}"))
    store.db.write(lambda tx: tx.executemany(
        "INSERT INTO messages (id, recipient, sender, content, message_type, reply_to, timestamp, read_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows))
    store.db.write(lambda tx: tx.executemany(
        "INSERT INTO message_history (direction, sender, recipient, content, message_type, timestamp, message_id) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)", history))
    expected_gone = sum(1 for r in rows if r[7] == OLD)
    kept = {r[0] for r in rows if r[7] != OLD}

    stop = tmp_path / "stop"
    names = [f"agent{i}" for i in range(4)]
    procs = [fed.spawn(AGENT, me, names[(i + 1) % 4], str(stop), phase=4) for i, me in enumerate(names)]
    for p in procs:
        assert p.stdout.readline().strip() == "ready"
    time.sleep(0.3)  # the agents are sending and claiming
    result = prune("30d", batch_size=500, settings=config.settings())
    time.sleep(0.2)
    stop.touch()
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err[-3000:]
        outs.append(json.loads(out.strip().splitlines()[-1]))

    assert result.removed == {"messages": expected_gone, "message_history": 5_000, "tasks": 0}
    assert result.batches > 10  # bounded batches, not one transaction
    assert [o["errors"] for o in outs] == [[], [], [], []]
    sent = [m for o in outs for m in o["sent"]]
    received = [m for o in outs for m in o["received"]]
    assert len(sent) > 20  # the agents really worked during the prune
    lost, twice = set(sent) - set(received), len(received) - len(set(received))
    assert (lost, twice) == (set(), 0) and set(received) == set(sent)  # each delivered exactly once
    left = {r[0] for r in store.db.fetchall("SELECT id FROM messages WHERE id LIKE ?", ("bulk%",))}
    assert left == kept
    agent_rows = store.db.fetchone("SELECT COUNT(*) FROM messages WHERE id NOT LIKE ?", ("bulk%",))[0]
    assert agent_rows == len(sent)  # claimed just now: read, but not old
