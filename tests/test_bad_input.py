"""Bad input gets a clear error and loses nothing: nothing written, nothing outside the root touched."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from federation import config, context, governance, messaging
from federation.config import MAX_CONTENT_BYTES
from federation.errors import ConfigError, ConflictError, NotFoundError, ValidationError

PHASES = [1, 3, 4]


def snapshot(fed) -> dict:
    """Every file under the test's temp dir with its bytes, and every database row."""
    files = {}
    for path in fed.root.parent.rglob("*"):
        # .locks and control/ (the fleet's announcements and counts) are bookkeeping, not the federation's data
        if path.is_file() and ".locks" not in path.parts and "control" not in path.parts and not path.name.endswith((".db-wal", ".db-shm", ".writelock")):
            if path.suffix != ".db":
                files[str(path)] = path.read_bytes()
    rows = {}
    if fed.db_path.exists() or fed.env.get("FEDERATION_DB_URL"):
        from federation.stores.schema import TABLES

        db = fed.store().db
        for table in TABLES:
            rows[table] = sorted(map(repr, db.fetchall(f"SELECT * FROM {table}")))
    return {"files": files, "rows": rows}


@pytest.fixture(params=PHASES)
def seeded(fed, request):
    fed.phase(request.param)
    pid = governance.create_poll("alice", "Seed?", ["yes", "no"])
    sid = governance.create_session("alice", "Seed session")
    governance.attach_artifact(sid, "design", "docs/d.md")
    messaging.send_message("alice", "bob", "seed")
    return fed, pid, sid


BAD_NAMES = ["../x", "a/b", "", ".hidden", "x" * 65, "a..b", "bob\x00", "bob ", 42, None, "/etc/passwd"]


@pytest.mark.parametrize("name", BAD_NAMES, ids=repr)
def test_bad_agent_names_are_refused(seeded, name):
    """Agent names that could escape the root, or are not strings, are ValidationError and write nothing."""
    fed, pid, sid = seeded
    before = snapshot(fed)
    calls = [
        lambda: messaging.send_message(name, "bob", "hi"),
        lambda: messaging.send_message("alice", name, "hi"),
        lambda: messaging.check_inbox(name),
        lambda: context.set_context(name, "x"),
        lambda: context.set_expertise(name, ["sql"]),
        lambda: context.set_profile(name, "lead"),
        lambda: governance.vote(pid, name, "yes"),
        lambda: governance.create_poll(name, "q?", ["a", "b"]),
        lambda: governance.assign_role(sid, name, "dev"),
    ]
    for call in calls:
        with pytest.raises(ValidationError, match="agent name|must be a string"):
            call()
    assert snapshot(fed) == before
    assert not (fed.root.parent / "x").exists() and not (fed.root / "x").exists()


def test_contract_error_cases(seeded):
    """Each error case of CONTRACT.md raises its documented error and writes nothing."""
    fed, pid, sid = seeded
    before = snapshot(fed)
    cases = [
        (ValidationError, lambda: governance.create_poll("alice", "   ", ["a", "b"])),
        (ValidationError, lambda: governance.create_poll("alice", "q?", ["only one"])),
        (ValidationError, lambda: governance.create_poll("alice", "q?", ["a", "a"])),
        (ValidationError, lambda: governance.create_poll("alice", "q?", "ab")),
        (ValidationError, lambda: governance.vote(pid, "bob", "not an option")),
        (ValidationError, lambda: governance.vote(pid, "bob", 3)),
        (ValidationError, lambda: messaging.send_message("alice", "bob", "x" * (MAX_CONTENT_BYTES + 1))),
        (ValidationError, lambda: messaging.send_message("alice", "bob", b"bytes")),
        (ValidationError, lambda: context.set_context("bob", "é" * (MAX_CONTENT_BYTES // 2 + 1))),
        (ValidationError, lambda: context.set_profile("bob", traits=["not", "a", "dict"])),
        (ValidationError, lambda: context.set_profile("bob", traits={"x": object()})),
        (ValidationError, lambda: context.set_expertise("bob", "sql")),
        (ValidationError, lambda: governance.review_artifact(sid, "design", "bob", "maybe")),
        (ValidationError, lambda: messaging.get_history("bob", limit=0)),
        (ValidationError, lambda: governance.list_polls(status="pending")),
        (NotFoundError, lambda: governance.vote("0" * 32, "bob", "yes")),
        (NotFoundError, lambda: governance.get_poll("0" * 32)),
        (NotFoundError, lambda: governance.close_poll("0" * 32, "alice")),
        (NotFoundError, lambda: governance.get_session("0" * 32)),
        (NotFoundError, lambda: governance.assign_role("0" * 32, "bob", "dev")),
        (NotFoundError, lambda: governance.review_artifact(sid, "no-such-artifact", "bob", "approved")),
        (ConflictError, lambda: governance.close_poll(pid, "bob")),
    ]
    for error, call in cases:
        with pytest.raises(error):
            call()
    assert snapshot(fed) == before
    governance.close_poll(pid, "alice")
    with pytest.raises(ConflictError, match="closed"):
        governance.vote(pid, "bob", "yes")


def test_sql_metacharacters_are_stored_literally(seeded):
    """Quotes, semicolons and comment markers are data, never SQL."""
    fed, pid, sid = seeded
    nasty = "Robert'); DROP TABLE votes;-- \" % _ \\"
    mid = messaging.send_message("alice", "bob", nasty, message_type="x'--")
    qid = governance.create_poll("alice", nasty, [nasty, "' OR '1'='1"])
    governance.vote(qid, "bob", "' OR '1'='1")
    context.set_context("bob", nasty)
    assert [m["content"] for m in messaging.peek_inbox("bob") if m["id"] == mid] == [nasty]
    poll = governance.get_poll(qid)
    assert poll["question"] == nasty and poll["votes"] == {"bob": "' OR '1'='1"}
    assert governance.get_poll(pid)["question"] == "Seed?"
    assert context.get_context("bob")["text"] == nasty


def test_content_at_the_limit_is_accepted(seeded):
    """Exactly MAX_CONTENT_BYTES of content is accepted and comes back intact."""
    fed, pid, sid = seeded
    body = "x" * MAX_CONTENT_BYTES
    messaging.send_message("alice", "carol", body)
    assert messaging.check_inbox("carol")[0]["content"] == body


@pytest.mark.parametrize("var,value", [
    ("FEDERATION_USE_DB", "yes"), ("FEDERATION_USE_DB", "2"), ("FEDERATION_PHASE", "1"),
    ("FEDERATION_PHASE", "3.0"), ("FEDERATION_SHADOW_SAMPLE", "1.5"), ("FEDERATION_SHADOW_SAMPLE", "nan"),
    ("FEDERATION_SHADOW_SAMPLE", "half"), ("FEDERATION_DB_URL", "mysql://x"),
])
def test_nonsense_flags_fail_naming_the_variable(fed, var, value):
    """A bad setting is a ConfigError naming the variable and the accepted values; nothing is created."""
    fed.env[var] = value
    fed.apply()
    with pytest.raises(ConfigError, match=var) as info:
        governance.create_poll("alice", "q?", ["a", "b"])
    assert "use" in str(info.value)
    assert not fed.db_path.exists() and not (fed.root / "shared").exists()


def test_nonsense_flag_in_a_process_exits_cleanly(fed):
    """The CLI refuses a bad FEDERATION_PHASE with exit 2 and a one-line message, no traceback."""
    import subprocess
    import sys

    env = fed.subprocess_env()
    env["FEDERATION_PHASE"] = "banana"
    proc = subprocess.run([sys.executable, "-m", "federation.cli", "status"], env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2
    assert "FEDERATION_PHASE='banana' is not accepted: use 2, 3 or 4" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_malformed_legacy_file_is_never_overwritten(fed):
    """Phase 1: a corrupt polls.json makes votes fail with a clear error and stays byte-for-byte as it was."""
    fed.phase(1)
    path = fed.root / "shared" / "polls.json"
    path.parent.mkdir(parents=True)
    path.write_bytes(b'{"p1": {"question": "trunc')
    from federation.errors import CorruptFileError

    with pytest.raises(CorruptFileError, match="polls.json: invalid JSON"):
        governance.create_poll("alice", "q?", ["a", "b"])
    assert path.read_bytes() == b'{"p1": {"question": "trunc'
