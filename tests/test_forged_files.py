"""Forged delivery files and token files (issue 25: every file read from the disk is validated before use).

Real files planted under a real root, the real ``federation migrate`` process, both engines: a delivery
count or lease time out of range, a dead letter or key file naming someone else's message, a token
file with NaN or a name given twice.  Each is listed or logged, never a crash, never obeyed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from federation import config, messaging
from federation.apps import agent_tokens
from federation.apps.agent_tokens import TokenFileError
from federation.domain import delivery
from federation.domain.clock import now, now_and_after
from federation.domain.layout import Tree
from federation.transfer.migrate import migrate

REPO = Path(__file__).resolve().parent.parent
STAMP = "2026-01-01T00:00:00.000000+00:00"


def write(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def message(mid: str, sender: str = "alice", recipient: str = "bob", **extra) -> dict:
    return {"id": mid, "sender": sender, "recipient": recipient, "content": f"body of {mid}",
            "message_type": "task", "reply_to": None, "timestamp": STAMP, **extra}


def run_migrate(fed, *args: str) -> tuple[int, dict]:
    out = subprocess.run([sys.executable, "-m", "federation", "migrate", "--json", *args],
                         env=fed.subprocess_env(1), capture_output=True, text=True, timeout=120, cwd=str(REPO))
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    return out.returncode, json.loads(out.stdout)


def reasons(result: dict) -> dict[str, str]:
    return {Path(i["path"]).relative_to(i["path"].split("/nodes/")[0]).as_posix(): i["reason"]
            for i in result["invalid"]}


def test_forged_delivery_counts_and_lease_times_are_listed_never_a_crash(fed):
    """A dead/ file and a lease journal saying attempt 10**23, a lease until the year 9999, a dead letter
    naming another recipient: `migrate` (dry run and real) lists each and exits 3, not 1 (no OverflowError,
    no "integer out of range"); the forged dead letter is never deliverable and never bob's dead letter; a
    journal entry out of range is a lost lease (the message is delivered again, never lost)."""
    fed.phase(1)
    nodes = fed.root / "nodes"
    huge = 10 ** 23
    write(nodes / "bob" / "dead" / "d-huge.json", message("d-huge", attempt=huge, lease_until=STAMP, dead_at=STAMP))
    write(nodes / "bob" / "dead" / "d-carol.json", message("d-carol", recipient="carol", attempt=5,
                                                          lease_until=STAMP, dead_at=STAMP))
    write(nodes / "bob" / "dead" / "d-good.json", message("d-good", attempt=5, lease_until=STAMP, dead_at=STAMP))
    for mid in ("l-huge", "l-9999", "l-text"):
        write(nodes / "bob" / "leased" / f"{mid}.json", message(mid))
    write(nodes / "bob" / "leased" / ".leases.json", {
        "l-huge": [huge, STAMP], "l-9999": [1, "9999-12-31T00:00:00.000000+00:00"], "l-text": [1, "soon"]})

    code, dry = run_migrate(fed, "--dry-run")
    assert code == 3
    listed = reasons(dry)
    assert listed.keys() == {"nodes/bob/dead/d-huge.json", "nodes/bob/dead/d-carol.json",
                             "nodes/bob/leased/.leases.json"}, listed
    assert "out of range" in listed["nodes/bob/dead/d-huge.json"]
    assert "recipient 'carol'" in listed["nodes/bob/dead/d-carol.json"]
    journal = [i["reason"] for i in dry["invalid"] if i["path"].endswith(".leases.json")]
    assert len(journal) == 3 and all("out of range" in r or "not a UTC timestamp" in r for r in journal), journal

    code, done = run_migrate(fed)
    assert code == 3, done  # invalid files listed; 1 would be a crash (or rows missing)
    assert reasons(done) == listed and not done.get("missing_in_db")
    rows = {r[0]: tuple(r[1:]) for r in fed.store().db.fetchall(
        "SELECT id, attempt, lease_until, dead_at IS NOT NULL FROM messages")}
    assert "d-huge" not in rows and "d-carol" not in rows  # invalid: not imported, so never delivered
    assert rows["d-good"] == (5, STAMP, True)
    assert {rows[m] for m in ("l-huge", "l-9999", "l-text")} == {(1, "", False)}  # lost leases: delivered again

    # the files, read by the agents (phase 1): the same verdicts
    with capture_logs() as logs:
        assert [m["id"] for m in messaging.dead_letters("bob")] == ["d-good"]
        assert messaging.dead_letters("carol") == []
        got = messaging.receive("bob", lease=60)
    assert sorted((m["id"], m["attempt"]) for m in got) == [("l-9999", 1), ("l-huge", 1), ("l-text", 1)]
    skipped = {(Path(e["path"]).name, e["reason"][:20]) for e in logs if e["event"] == "legacy_file_invalid"}
    assert {"d-huge.json", "d-carol.json", ".leases.json"} <= {name for name, _ in skipped}
    assert messaging.ack("bob", ["d-carol"]) == []  # bob cannot ack what is not his
    assert (nodes / "bob" / "dead" / "d-huge.json").exists()  # left for the operator


def test_delivery_bounds():
    """The bounds themselves: what a receive writes passes; one past each bound does not."""
    start, until = now_and_after(delivery.MAX_LEASE_S)
    assert delivery.journal_entry([delivery.MAX_ATTEMPT, until], start) == ((delivery.MAX_ATTEMPT, until), None)
    assert delivery.journal_entry([0, None], start) == ((0, None), None)
    for bad in ([delivery.MAX_ATTEMPT + 1, until], [-1, until], [True, until], [1.0, until], [1, 5], [1],
                [1, "2026-01-01T00:00:00+02:00"], [1, "2026-01-01T00:00:00Z"], "x"):
        lease, problem = delivery.journal_entry(bad, start)
        assert lease is None and problem, bad
    _, far = now_and_after(delivery.LEASE_HORIZON_S + 60)
    assert "out of range" in delivery.journal_entry([1, far], start)[1]
    assert delivery.delivery_problem({"attempt": 3, "lease_until": start, "dead_at": now()}) is None
    assert delivery.delivery_problem({"attempt": 3, "dead_at": float("nan")})


def _plant_key(fed, sender: str, for_key: str, **doc) -> Path:
    """A key file at the place of *sender*'s key *for_key*, naming no message unless *doc* says otherwise."""
    path = Tree(fed.root).key_file(sender, for_key)
    write(path, {"sender": sender, "key": for_key, "ids": [], "recipients": [], "created_at": STAMP, **doc})
    return path


@pytest.mark.parametrize("phase", [1, 2])
def test_a_forged_key_file_never_stops_a_send(fed, phase):
    """A key file naming no message, or carol's message: alice's keyed send and keyed broadcast go ahead
    (no IndexError, not carol's id, not an empty list), the file is logged, and the key works afterwards."""
    fed.phase(phase)
    for agent in ("bob", "carol"):
        messaging.send_message("dave", agent, "hello")
    carols = messaging.send_message("carol", "bob", "carol's own")
    _plant_key(fed, "alice", "empty")
    _plant_key(fed, "alice", "b-empty")
    _plant_key(fed, "alice", "carols", ids=[carols], recipients=["bob"])
    _plant_key(fed, "alice", "other-key", key="not-this-one", ids=["x1"], recipients=["bob"])
    with capture_logs() as logs:
        first = messaging.send_message("alice", "bob", "keyed once", idempotency_key="empty")
        mine = messaging.send_message("alice", "bob", "not carol's", idempotency_key="carols")
        other = messaging.send_message("alice", "bob", "a key of its own", idempotency_key="other-key")
        sent = messaging.broadcast("alice", "all hands", idempotency_key="b-empty")
    assert mine != carols and other != "x1" and len(sent) == 2  # bob and carol
    assert len(logs) >= 4 and {e["event"] for e in logs} == {"legacy_file_invalid"}
    assert any("which 'carol' sent" in e["reason"] for e in logs)
    # the key now stands for alice's own send: the same key again writes nothing
    assert messaging.send_message("alice", "bob", "keyed once", idempotency_key="empty") == first
    assert messaging.broadcast("alice", "all hands", idempotency_key="b-empty") == sent
    got = [(m["sender"], m["content"]) for m in messaging.check_inbox("bob")]
    assert got == [("dave", "hello"), ("carol", "carol's own"), ("alice", "keyed once"),
                   ("alice", "not carol's"), ("alice", "a key of its own"), ("alice", "all hands")]


def test_migrate_lists_key_files_that_are_not_their_senders(fed):
    """`migrate` carries a good key and lists a key file naming no message or another sender's message:
    the database never gives alice's key to carol's message."""
    fed.phase(1)
    keyed = messaging.send_message("alice", "bob", "keyed", idempotency_key="good")
    carols = messaging.send_message("carol", "bob", "carol's own")
    empty = _plant_key(fed, "alice", "empty")
    forged = _plant_key(fed, "alice", "forged", ids=[carols], recipients=["bob"])
    code, dry = run_migrate(fed, "--dry-run")
    listed = {i["path"]: i["reason"] for i in dry["invalid"]}
    assert code == 3 and listed.keys() == {str(empty), str(forged)}, listed
    assert "names no message" in listed[str(empty)] and "'carol'" in listed[str(forged)]
    result = migrate(settings=config.settings())
    assert result.exit_code == 3 and {i["path"] for i in result.invalid} == {str(empty), str(forged)}
    keys = dict(fed.store().db.fetchall("SELECT id, idempotency_key FROM messages"))
    assert keys == {keyed: "good", carols: None}
    fed.phase(4)
    assert messaging.send_message("alice", "bob", "keyed", idempotency_key="good") == keyed
    assert messaging.send_message("alice", "bob", "forged?", idempotency_key="forged") != carols


# -- the token file --------------------------------------------------------------------------------

def _token_doc(**agents) -> dict:
    return {"version": 1, "agents": agents}


def _entry(token: str, revoked_at: str | None = None) -> dict:
    return {"sha256": agent_tokens.token_hash(token), "created_at": STAMP, "created_by": "test",
            "revoked_at": revoked_at}


@pytest.mark.sqlite_only
@pytest.mark.parametrize("text", [
    # a name given twice: the first revoked, the second active (the revocation must not be undone)
    '{"version": 1, "agents": {"alice": REVOKED, "alice": ACTIVE}}',
    '{"version": 1, "agents": {"alice": ACTIVE, "alice": ACTIVE}}',
    '{"version": 1, "agents": {"alice": ACTIVE}, "agents": {"alice": ACTIVE}}',
    '{"version": 1, "agents": {"alice": ACTIVE}, "written": NaN}',
    '{"version": 1, "agents": {"alice": ACTIVE}, "written": Infinity}',
    '{"version": 1, "agents": {"alice": ACTIVE}, "written": -1e999}',
    '{"version": 1.0, "agents": {"alice": ACTIVE}}',
], ids=["revoked-then-active", "twice-active", "agents-twice", "nan", "infinity", "overflow", "version-float"])
def test_a_token_file_with_a_name_twice_or_a_non_finite_number_authenticates_nobody(fed, text):
    path = agent_tokens.tokens_path(fed.root)
    token, _ = agent_tokens.add("alice", fed.root)
    registry = agent_tokens.TokenRegistry(path, check_every=0)
    assert registry.agent_for(token) == "alice"
    content = (text.replace("REVOKED", json.dumps(_entry(token, revoked_at=STAMP)))
               .replace("ACTIVE", json.dumps(_entry(token))))
    path.write_text(content)
    with capture_logs() as logs:
        assert registry.agent_for(token) is None and registry.agents() == []
    assert registry.problem and [e["event"] for e in logs] == ["agent_tokens_unreadable"]
    with pytest.raises(TokenFileError):
        agent_tokens.list_tokens(fed.root)
    with pytest.raises(TokenFileError):
        agent_tokens.revoke("alice", fed.root)
    assert path.read_text() == content  # never rewritten from a file it could not trust
