"""The concurrency contract (DESIGN.md), shown with several real processes."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import time
from pathlib import Path

import pytest

from federation import core, governance, messaging

from _procs import WAIT_FOR_GO, drain_script, finish as _finish  # noqa: E402


def _file_polls(fed) -> dict:
    return json.loads((fed.root / "shared" / "polls.json").read_text())


@pytest.mark.parametrize("phase", [1, 2, 3, 4])
def test_no_lost_votes(fed, phase, tmp_path):
    """8 processes x 200 distinct voters on one poll keep exactly 1,600 votes, in every phase."""
    fed.phase(phase)
    poll_id = governance.create_poll("lead", "Ship it?", ["yes", "no"])
    go = tmp_path / "go"
    code = WAIT_FOR_GO + """
from federation import governance
i = int(sys.argv[2])
for j in range(200):
    governance.vote(sys.argv[3], f"voter-{i}-{j}", "yes" if j % 2 else "no")
"""
    procs = [fed.spawn(code, str(go), str(i), poll_id) for i in range(8)]
    time.sleep(0.3)
    go.touch()
    _finish(procs)
    poll = governance.get_poll(poll_id)
    assert len(poll["votes"]) == 1600
    assert poll["tally"] == {"yes": 800, "no": 800}
    if phase in (2, 3):
        files = _file_polls(fed)[poll_id]["votes"]
        db = fed.store().load_poll(poll_id)["votes"]
        assert files == db and len(db) == 1600


@pytest.mark.parametrize("phase", [1, 2, 3, 4])
def test_inbox_exactly_once(fed, phase, tmp_path):
    """2,000 messages delivered while 4 processes check the same inbox: each received exactly once."""
    fed.phase(phase)
    go, done = tmp_path / "go", tmp_path / "done"
    code = drain_script('messaging.check_inbox("bob")')
    procs = [fed.spawn(code, str(go), str(done)) for _ in range(4)]
    time.sleep(0.3)
    go.touch()
    sent = [messaging.send_message("alice", "bob", f"message {i}") for i in range(2000)]
    done.touch()
    received = [json.loads(out) for out in _finish(procs)]
    flat = [m for got in received for m in got]
    assert len(flat) == len(set(flat)), "a message was delivered twice"
    assert set(flat) == set(sent), "a message was lost"
    assert messaging.peek_inbox("bob") == []


@pytest.mark.parametrize("phase", [2, 3, 4])
def test_stale_save_cannot_undo(fed, phase):
    """A process holding an old copy of the polls cannot undo another process's vote or close."""
    fed.phase(phase)
    p1 = governance.create_poll("alice", "First?", ["a", "b"])
    p2 = governance.create_poll("alice", "Second?", ["a", "b"])
    stale = core.load_polls()  # this process's copy, soon out of date
    fed.run_py(f"""
from federation import governance
governance.vote({p1!r}, "carol", "a")
governance.vote({p2!r}, "dave", "b")
governance.close_poll({p2!r}, "alice")
""")
    stale[p1]["votes"]["erin"] = "b"  # the one change this process made
    core.save_polls(stale)
    for read in (governance.get_poll, lambda pid: fed.store().load_poll(pid)):
        first, second = read(p1), read(p2)
        assert first["votes"] == {"carol": "a", "erin": "b"}
        assert second["votes"] == {"dave": "b"}
        assert second["status"] == "closed"
    if phase in (2, 3):
        files = _file_polls(fed)
        assert files[p1]["votes"] == {"carol": "a", "erin": "b"}
        assert files[p2]["status"] == "closed"


def _all_json_parse(root: Path) -> int:
    count = 0
    for path in root.rglob("*.json"):
        json.loads(path.read_text(encoding="utf-8"))
        count += 1
    return count


@pytest.mark.parametrize("phase", [1, 3, 4])
def test_sigkill_mid_stream(fed, phase):
    """A writer killed with SIGKILL mid-stream leaves a sound database, parseable files, and every returned vote."""
    fed.phase(phase)
    poll_id = governance.create_poll("lead", "Crash?", ["yes", "no"])
    code = """
import sys
from federation import governance, messaging
for j in range(100000):
    governance.vote(sys.argv[1], f"voter-{j}", "yes")
    messaging.send_message("lead", "bob", f"m{j}")
    print(j, flush=True)
"""
    proc = fed.spawn(code, poll_id)
    confirmed = -1
    deadline = time.monotonic() + 60
    while confirmed < 150 and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        confirmed = int(line)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert confirmed >= 150, proc.stderr.read()[-2000:]
    _all_json_parse(fed.root)  # raises on a torn file
    inbox_files = list((fed.root / "nodes" / "bob" / "inbox").glob("*.json"))
    if phase <= 3:  # the files are written: every confirmed message has its file, and it parsed
        assert len(inbox_files) >= confirmed + 1
    else:  # phase 4 never writes the legacy files
        assert inbox_files == [] and not (fed.root / "shared" / "polls.json").exists()
    if phase >= 2:
        conn = sqlite3.connect(fed.db_path) if fed.env.get("FEDERATION_DB_URL") is None else None
        if conn is not None:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            conn.close()
    votes = governance.get_poll(poll_id)["votes"]
    missing = [j for j in range(confirmed + 1) if f"voter-{j}" not in votes]
    assert missing == []
    if phase in (1, 3):
        file_votes = _file_polls(fed)[poll_id]["votes"]
        assert all(f"voter-{j}" in file_votes for j in range(confirmed + 1))
    assert len(messaging.peek_inbox("bob")) >= confirmed + 1
