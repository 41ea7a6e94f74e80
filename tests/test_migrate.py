"""``federation migrate`` / ``scripts/migrate_to_sqlite.py``: real trees, real database, real processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from federation import config, governance, messaging
from federation.domain.generate import MALFORMED_KINDS, generate
from federation.transfer.rows import read_tree
from federation.errors import BackfillRequiredError
from federation.transfer.migrate import complete, import_rows, migrate
from federation.transfer.report import build_report

from _transfer_helpers import CLI, api_view, cli, cli_json, db_rows, snapshot, tree_rows

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_generated_tree_migrates_with_counts_equal_and_report_consistent(fed):
    """Every entity of a generated tree migrates: exit 0, files == rows == what was written; report agrees."""
    written = generate(fed.root, agents=9, messages=120, polls=6, sessions=4)
    rc, out = cli_json(fed, "migrate")
    assert rc == 0, out
    assert out["dry_run"] is False and out["invalid"] == [] and out["dropped_fields"] == []
    for table, n in written["rows"].items():
        assert out["entities"][table] == {"files": n, "rows": n}, table
    assert all(n > 0 for n in written["rows"].values())  # the tree really holds every entity
    assert db_rows(fed.store()) == tree_rows(fed.root)
    rc, rep = cli_json(fed, "report")
    assert rc == 0 and rep["consistent"] is True


def test_plan_script_is_the_migrate_command(fed):
    """scripts/migrate_to_sqlite.py runs the same command, with the same exit code and JSON."""
    generate(fed.root, agents=3, messages=10)
    proc = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "migrate_to_sqlite.py"), "--json"],
                          env=fed.subprocess_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["entities"]["messages"] == {"files": 10, "rows": 10}


def test_phase3_api_reads_equal_phase1_reads_after_migration(fed):
    """What agents saw through the API on files (phase 1) is what they see from the database (phase 3)."""
    generate(fed.root, agents=8, messages=60, polls=5, sessions=4)
    fed.phase(1)
    before = api_view()
    fed.phase(3)
    with pytest.raises(BackfillRequiredError):  # never an empty federation before the migration
        messaging.peek_inbox("agent-000")
    assert migrate(settings=config.settings()).exit_code == 0
    fed.phase(3)
    assert api_view() == before
    fed.phase(4)
    assert api_view() == before


def test_dry_run_leaves_filesystem_byte_for_byte_unchanged(fed, tmp_path):
    """--dry-run parses and counts (invalid files too) and writes nothing at all, not even the database file."""
    written = generate(fed.root, agents=4, messages=30, malformed=True, unknown_fields=True)
    before = snapshot(tmp_path)
    rc, out = cli_json(fed, "migrate", "--dry-run")
    assert rc == 3 and out["dry_run"] is True
    assert out["entities"]["messages"]["files"] == written["rows"]["messages"]
    assert len(out["invalid"]) == len(MALFORMED_KINDS)
    assert snapshot(tmp_path) == before
    assert not fed.db_path.exists()
    assert not (fed.root / ".locks").exists()


def test_migrating_twice_changes_nothing_the_second_time(fed):
    """A second run inserts nothing, keeps the backfill date, and leaves every table as one run left it."""
    generate(fed.root, agents=5, messages=40)
    assert migrate(settings=config.settings()).exit_code == 0
    store = fed.store()
    first, stamp = db_rows(store), store.meta("backfilled_at")
    rc, out = cli_json(fed, "migrate")
    assert rc == 0 and out["entities"]["messages"] == {"files": 40, "rows": 40}
    assert db_rows(store) == first == tree_rows(fed.root)
    assert store.meta("backfilled_at") == stamp


def test_sigkill_mid_run_then_rerun_gives_the_database_of_one_run(fed):
    """A migration killed with SIGKILL half-way leaves a partial, not-backfilled database; a rerun completes it."""
    total = 12_000
    generate(fed.root, agents=20, messages=total, polls=10, sessions=10)
    proc = subprocess.Popen([sys.executable, "-c", CLI, "migrate", "--batch-size", "20"], env=fed.subprocess_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    on_postgres = bool(fed.env.get("FEDERATION_DB_URL"))
    store = None
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            # look without creating anything: the file first (SQLite), then the schema the migration made
            if store is None and (on_postgres or fed.db_path.exists()):
                store = fed.store()
            if store is not None and store.db.schema_version() >= 1:
                if store.db.read(lambda tx: tx.fetchone("SELECT COUNT(*) FROM messages")[0]):
                    break
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "the migration finished before it could be killed"
    store = store or fed.store()
    partial = store.db.read(lambda tx: tx.fetchone("SELECT COUNT(*) FROM messages")[0])
    assert 0 < partial < total
    assert store.meta("backfilled_at") is None
    fed.phase(3)
    with pytest.raises(BackfillRequiredError):
        messaging.peek_inbox("agent-001")
    rerun = cli(fed, "migrate")
    assert rerun.returncode == 0, rerun.stderr
    assert db_rows(store) == tree_rows(fed.root)
    assert store.meta("backfilled_at") is not None
    assert len(messaging.peek_inbox("agent-001")) == total // 20


def test_each_malformed_file_is_reported_and_the_rest_migrates(fed):
    """Empty, truncated, not UTF-8, wrong JSON type, missing field: each listed by path and reason; exit 3;
    every valid row imported; unknown fields in dropped_fields; no source file modified."""
    written = generate(fed.root, agents=6, messages=50, malformed=True, unknown_fields=True)
    before = snapshot(fed.root)
    rc, out = cli_json(fed, "migrate")
    assert rc == 3
    reasons = {i["path"]: i["reason"] for i in out["invalid"]}
    assert len(reasons) == len(MALFORMED_KINDS)
    for kind, (_rel, _payload, fragment) in MALFORMED_KINDS.items():
        assert fragment in reasons[written["malformed"][kind]], (kind, reasons)
    for table, n in written["rows"].items():
        assert out["entities"][table] == {"files": n, "rows": n}, table
    assert {(d["path"], d["field"]) for d in out["dropped_fields"]} == set(written["unknown"])
    assert snapshot(fed.root) == before  # .locks is not created either: migrate takes no file lock
    assert fed.store().meta("backfilled_at") is not None  # what was valid may be served


def test_files_outside_the_legacy_format_are_reported_not_ignored(fed):
    """A file the legacy layout does not define (notes in a node folder, a non-JSON file in an inbox or in
    shared/) is listed in dropped_fields as a whole file; a JSON document there (named *.json, or holding a
    JSON list or object) is listed as not imported, and fails the migration (exit 3, issue 24); the legacy
    files still migrate."""
    from federation.transfer.rows import UNKNOWN_FILE

    generate(fed.root, agents=2, messages=4, polls=1, sessions=1)
    extra = [fed.root / "nodes" / "agent-000" / "notes.txt", fed.root / "nodes" / "agent-001" / "inbox" / "x.bak",
             fed.root / "shared" / "sessions" / "README"]
    for path in extra:
        path.write_text("kept by hand")
    documents = {fed.root / "shared" / "old-polls.json": "kept by hand",  # named as JSON: a document
                 fed.root / "nodes" / "agent-000" / "cache": '{"a": 1, "b": 2, "c": 3}'}  # holding an object
    for path, text in documents.items():
        path.write_text(text)
    (fed.root / "nodes" / "agent-001" / "inbox" / ".msg.json.123.tmp").write_text("{")  # a temp file: skipped
    rc, out = cli_json(fed, "migrate")
    assert rc == 3, out
    assert sorted(d["path"] for d in out["dropped_fields"] if d["field"] == UNKNOWN_FILE) == sorted(map(str, extra))
    assert sorted((n["path"], n["records"], n["bytes"]) for n in out["not_imported"]) == sorted(
        (str(p), 3 if text.startswith("{") else None, len(text)) for p, text in documents.items())
    assert out["invalid"] == [] and out["accepted"] == []
    assert out["entities"]["messages"] == {"files": 4, "rows": 4}


def test_invalid_poll_inside_polls_json_is_reported_and_the_other_polls_migrate(fed):
    """One bad poll in shared/polls.json is listed with the file and the poll; the other polls and votes import."""
    shared = fed.root / "shared"
    shared.mkdir()
    (shared / "polls.json").write_text(json.dumps({
        "good": {"id": "good", "question": "Q?", "options": ["a", "b"], "status": "open", "creator": "alice",
                 "created_at": "2024-01-01T00:00:00", "votes": {"bob": "a"}},
        "noq": {"id": "noq", "options": ["a", "b"], "creator": "alice", "created_at": "2024-01-01T00:00:00"},
        "badvote": {"id": "badvote", "question": "Q?", "options": ["a", "b"], "creator": "alice",
                    "created_at": "2024-01-01T00:00:00", "votes": {"bob": 3}},
    }))
    result = migrate(settings=config.settings())
    assert result.exit_code == 3
    # a vote that is not a string naming an option is listed and not imported; its poll is (issue 16)
    assert sorted(i["reason"] for i in result.invalid) == [
        "poll 'badvote': the vote of 'bob' is not imported: a vote must be a string, found number",
        "poll 'noq': missing required field 'question'"]
    assert {i["path"] for i in result.invalid} == {str(shared / "polls.json")}
    assert result.entities["polls"] == {"files": 2, "rows": 2}
    assert db_rows(fed.store())["votes"] == {("good", "bob", "a", "2024-01-01T00:00:00")}


def test_vote_cast_in_phase2_after_files_were_read_survives_the_migration(fed):
    """Older file content never overwrites what a live phase-2 dual-write already put in the database."""
    fed.phase(2)
    pid = governance.create_poll("alice", "Ship it?", ["yes", "no"])
    governance.vote(pid, "bob", "yes")
    messaging.send_message("alice", "bob", "hello")
    scanned = read_tree(fed.root)  # the migration reads the files: bob voted yes
    governance.vote(pid, "bob", "no")  # live traffic: files and database now say no
    governance.vote(pid, "carol", "yes")
    import_rows(fed.store(), scanned)  # the older content is offered to the database
    assert governance.get_poll(pid)["votes"] == {"bob": "no", "carol": "yes"}
    fed.phase(3)
    assert migrate(settings=config.settings()).exit_code == 0
    assert governance.get_poll(pid)["tally"] == {"yes": 1, "no": 1}
    assert fed.store().load_poll(pid)["votes"] == {"bob": "no", "carol": "yes"}


def test_message_claimed_in_phase2_after_files_were_read_is_not_delivered_again(fed):
    """A phase-2 check_inbox between the read and the insert (file deleted, no row yet to claim) leaves the
    message read in the database, not unread: phase 3 never delivers it a second time."""
    fed.phase(1)
    mid = messaging.send_message("alice", "bob", "sent before the database existed")
    fed.phase(2)
    scanned = read_tree(fed.root)  # the migration reads the message file
    assert [m["id"] for m in messaging.check_inbox("bob")] == [mid]  # the file goes; the database has no row
    import_rows(fed.store(), scanned)  # the migration inserts what it read
    assert complete(fed.store(), scanned).exit_code == 0
    fed.phase(3)
    assert messaging.check_inbox("bob") == []
    assert build_report(settings=config.settings()).consistent


def test_expertise_replaced_live_is_not_extended_by_older_file_content(fed):
    """An agent's expertise set written by a live dual-write is kept whole: stale domains are not added back."""
    from federation import context

    fed.phase(2)
    context.set_expertise("dana", ["sql", "python"])
    scanned = read_tree(fed.root)
    context.set_expertise("dana", ["ops"])
    import_rows(fed.store(), scanned)
    assert fed.store().load_expertise("dana")["domains"] == ["ops"]


def test_expertise_cleared_in_phase2_after_files_were_read_is_not_brought_back(fed):
    """Clearing an agent's expertise live (file and rows deleted) between the read and the insert leaves
    the agent without expertise, not with the old domains the migration had read."""
    from federation import context

    fed.phase(1)
    context.set_expertise("dana", ["sql", "python"])  # before the database existed
    fed.phase(2)
    scanned = read_tree(fed.root)
    context.set_expertise("dana", [])  # live: the file goes, the database has nothing to delete yet
    import_rows(fed.store(), scanned)
    assert complete(fed.store(), scanned).exit_code == 0
    assert fed.store().load_expertise("dana") is None
    assert build_report(settings=config.settings()).consistent


def test_empty_root_migrates_to_an_empty_backfilled_database(fed):
    """No legacy files: exit 0, every count zero, and phase 3 serves the (empty) database."""
    rc, out = cli_json(fed, "migrate")
    assert rc == 0
    assert all(c == {"files": 0, "rows": 0} for c in out["entities"].values())
    fed.phase(3)
    assert messaging.peek_inbox("alice") == []


def test_database_failure_exits_1_with_one_clean_line(fed, tmp_path):
    """A database that cannot be opened is a failure (exit 1) reported without a traceback."""
    generate(fed.root, agents=2, messages=3)
    if fed.env.get("FEDERATION_DB_URL"):
        bad = "postgresql://nobody@127.0.0.1:1/nothing"  # nothing listens on port 1
    else:
        bad = tmp_path / "adir.db"
        bad.mkdir()  # a directory where the database file should be
    proc = cli(fed, "migrate", "--db", str(bad))
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr and "error:" in proc.stderr


def test_rows_that_do_not_arrive_fail_the_validation_with_exit_1(fed):
    """Counts are validated key by key: a row the database silently refused makes the run fail (exit 1),
    names the key, and leaves the database not backfilled."""
    if fed.env.get("FEDERATION_DB_URL"):
        pytest.skip("the silent refusal is a SQLite trigger")
    generate(fed.root, agents=3, messages=9)
    store = fed.store()  # the database exists (not backfilled: legacy files were there) ...
    store.db.write(lambda tx: tx.execute(  # ... and drops one message on insert, without an error
        "CREATE TRIGGER drop_one BEFORE INSERT ON messages WHEN NEW.id = 'msg-0000004' "
        "BEGIN SELECT RAISE(IGNORE); END"))
    rc, out = cli_json(fed, "migrate")
    assert rc == 1
    assert out["missing_in_db"] == {"messages": ["msg-0000004"]}
    assert out["entities"]["messages"] == {"files": 9, "rows": 8}
    assert store.meta("backfilled_at") is None


def test_duplicate_message_ids_are_reported_not_merged(fed):
    """Two inbox files with the same message id: the second is listed as invalid (exit 3), the first imported."""
    for agent in ("ann", "bob"):
        inbox = fed.root / "nodes" / agent / "inbox"
        inbox.mkdir(parents=True)
        (inbox / "m1.json").write_text(json.dumps({"id": "m1", "sender": "cy", "recipient": agent,
                                                   "content": f"to {agent}", "timestamp": "2024-01-01T00:00:00"}))
    result = migrate(settings=config.settings())
    assert result.exit_code == 3
    assert result.entities["messages"] == {"files": 1, "rows": 1}
    assert len(result.invalid) == 1 and "duplicate messages key 'm1'" in result.invalid[0]["reason"]


def test_usage_errors_exit_2(fed):
    """An unknown option is a usage error (exit 2) for migrate, report and sync."""
    assert cli(fed, "migrate", "--bogus").returncode == 2
    assert cli(fed, "report", "--bogus").returncode == 2
    assert cli(fed, "sync").returncode == 2  # --to is required
    assert cli(fed, "sync", "--to", "nowhere").returncode == 2


def test_progress_bar_only_on_a_terminal(fed):
    """With stderr on a terminal the CLI draws a tqdm progress bar; not on a terminal, none."""
    import fcntl
    import pty
    import struct
    import termios

    generate(fed.root, agents=2, messages=5)
    proc = cli(fed, "migrate", "--dry-run")
    assert proc.returncode == 0
    assert "reading" not in proc.stderr and "file/s" not in proc.stderr
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a terminal has a size
    try:
        child = subprocess.run([sys.executable, "-c", CLI, "migrate", "--dry-run"], env=fed.subprocess_env(),
                               stdout=subprocess.DEVNULL, stderr=slave, timeout=120)
        os.close(slave)
        seen = b""
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # the terminal is closed once everything was read
                break
            if not chunk:
                break
            seen += chunk
    finally:
        os.close(master)
    assert child.returncode == 0
    assert b"reading" in seen and b"file" in seen


# ---------------------------------------------------------------------------
# round trip: arbitrary legacy content reads the same through the API after the migration

_AGENTS = ("ann", "bob", "cy")
_agent = st.sampled_from(_AGENTS)
_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=20)
_opt_text = st.none() | _text
_message = st.fixed_dictionaries({"sender": _agent, "content": _text, "timestamp": _text},
                                 optional={"message_type": _text, "reply_to": _opt_text})
# a valid legacy vote names one of its poll's options (others are listed, not imported: test_untrusted_files)
_poll = st.lists(_text, min_size=2, max_size=3, unique=True).flatmap(lambda options: st.fixed_dictionaries({
    "question": _text, "options": st.just(options), "creator": _agent,
    "created_at": _text, "votes": st.dictionaries(_agent, st.sampled_from(options), max_size=3)},
    optional={"status": st.sampled_from(["open", "closed"])}))
# nested records carry every key, as the legacy writer wrote them (values may be null)
_session = st.fixed_dictionaries({
    "title": _text, "lead": _agent, "created_at": _text,
    "roles": st.dictionaries(_agent, st.fixed_dictionaries({"role": _text, "subtask": _opt_text,
                                                            "assigned_at": _opt_text}), max_size=2),
    "artifacts": st.dictionaries(_text, st.fixed_dictionaries({"path": _text, "attached_at": _opt_text}),
                                 max_size=2),
    "reviews": st.dictionaries(_text, st.dictionaries(_agent, st.fixed_dictionaries(
        {"status": st.sampled_from(["approved", "changes_requested"]), "comments": _opt_text,
         "reviewed_at": _opt_text}), min_size=1, max_size=2), max_size=2)},
    optional={"description": _opt_text, "phase": _text, "updated_at": _text})
_legacy_tree = st.fixed_dictionaries({
    "inboxes": st.dictionaries(_agent, st.lists(_message, max_size=3), max_size=3),
    "context": st.dictionaries(_agent, st.fixed_dictionaries({"text": _text}, optional={
        "last_heartbeat": _opt_text, "updated_at": _text}), max_size=3),
    "expertise": st.dictionaries(_agent, st.lists(_text.filter(bool), unique=True, max_size=3), max_size=3),
    "profiles": st.dictionaries(_agent, st.fixed_dictionaries({}, optional={
        "default_role": _opt_text, "updated_at": _text,
        "traits": st.dictionaries(_text, st.none() | st.booleans() | st.integers() | _text, max_size=3)}),
        max_size=3),
    "polls": st.lists(_poll, max_size=3),
    "sessions": st.lists(_session, max_size=2),
})


def _write_tree(root, tree) -> None:
    def dump(path, data):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, ensure_ascii=False, indent=2), encoding="utf-8")

    n = 0
    for agent, msgs in tree["inboxes"].items():
        for msg in msgs:
            n += 1
            dump(root / "nodes" / agent / "inbox" / f"m{n}.json", {"id": f"m{n}", **msg})
    for agent, doc in tree["context"].items():
        dump(root / "nodes" / agent / "context_window.json", {"agent": agent, **doc})
    for agent, domains in tree["expertise"].items():
        dump(root / "nodes" / agent / "expertise.json", {"agent": agent, "domains": domains})
    for agent, doc in tree["profiles"].items():
        dump(root / "nodes" / agent / "profile.json", {"agent": agent, **doc})
    if tree["polls"]:
        dump(root / "shared" / "polls.json", {f"p{i}": {"id": f"p{i}", **p} for i, p in enumerate(tree["polls"])})
    for i, s in enumerate(tree["sessions"]):
        dump(root / "shared" / "sessions" / f"s{i}.json", {"id": f"s{i}", **s})


def _entity_view() -> dict:
    from federation import context

    return {"agents": {a: (context.get_context(a), context.get_expertise(a), context.get_profile(a),
                           messaging.peek_inbox(a)) for a in _AGENTS},
            "polls": governance.list_polls(), "sessions": governance.list_sessions()}


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tree=_legacy_tree)
def test_any_legacy_content_reads_the_same_through_the_api_after_migration(fed, tmp_path, tree):
    """Arbitrary legacy files (any text, optional fields absent or null): after the migration the API in
    phases 3 and 4 returns exactly what it returned on the files, and the report finds them consistent."""
    import tempfile

    from federation.stores.sqlstore import forget_stores

    root = tempfile.mkdtemp(dir=tmp_path)
    fed.env["FEDERATION_ROOT"] = root
    fed.phase(1)
    forget_stores()
    store = fed.store()
    store.db.write(lambda tx: [tx.execute(f"DELETE FROM {t}") for t in
                               ("votes", "session_reviews", "session_roles", "session_artifacts", "polls",
                                "sessions", "messages", "context", "expertise", "profiles", "federation_meta")])
    _write_tree(fed.root.__class__(root), tree)
    before = _entity_view()
    result = migrate(settings=config.settings())
    assert result.exit_code == 0, result.to_json()
    assert build_report(settings=config.settings()).consistent
    fed.phase(3)
    assert _entity_view() == before
    fed.phase(4)
    assert _entity_view() == before
