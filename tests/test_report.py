"""``federation report`` / ``scripts/consistency_report.py`` and ``federation sync``."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from federation import config, context, messaging
from federation.domain.generate import generate
from federation.transfer.migrate import migrate
from federation.transfer.report import build_report

from _transfer_helpers import api_view, cli, cli_json, db_rows, snapshot

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def migrated(fed):
    """A generated tree, migrated, with the report consistent."""
    generate(fed.root, agents=6, messages=40, polls=4, sessions=3)
    assert migrate(settings=config.settings()).exit_code == 0
    assert build_report(settings=config.settings()).consistent
    return fed


def _voted_poll(root):
    polls = json.loads((root / "shared" / "polls.json").read_text())
    pid, poll = next((p, v) for p, v in polls.items() if v["votes"])
    voter = sorted(poll["votes"])[0]
    other = next(o for o in poll["options"] if o != poll["votes"][voter])
    return polls, pid, voter, other


def file_changed(fed):
    """A vote changed in shared/polls.json."""
    polls, pid, voter, other = _voted_poll(fed.root)
    polls[pid]["votes"][voter] = other
    (fed.root / "shared" / "polls.json").write_text(json.dumps(polls, indent=2))
    return "votes", f"{pid}/{voter}", "different"


def file_deleted(fed):
    """A session file deleted."""
    (fed.root / "shared" / "sessions" / "session-0001.json").unlink()
    return "sessions", "session-0001", "missing_in_files"


def row_changed(fed):
    """A context row changed in the database."""
    fed.store().db.write(lambda tx: tx.execute("UPDATE context SET text = ? WHERE agent = ?",
                                               ("changed in the db", "agent-001")))
    return "context", "agent-001", "different"


def row_deleted(fed):
    """A message row deleted from the database."""
    fed.store().db.write(lambda tx: tx.execute("DELETE FROM messages WHERE id = ?", ("msg-0000002",)))
    return "messages", "msg-0000002", "missing_in_db"


#: a phase in which each repair rewrites the side that is not authoritative (files in 1-2, the database in 3-4)
SAFE_PHASE = {"db": 2, "files": 3}


@pytest.mark.parametrize("mutate, repair", [(file_changed, "db"), (file_deleted, "db"), (row_changed, "files"),
                                            (row_deleted, "files")],
                         ids=["file-changed", "file-deleted", "row-changed", "row-deleted"])
def test_each_kind_of_drift_is_reported_under_its_table_and_key_and_sync_repairs_it(migrated, tmp_path,
                                                                                     mutate, repair):
    """A drift shows up under the right table and key with exit 1; sync --dry-run changes nothing;
    sync then makes the report consistent (exit 0) again."""
    fed = migrated
    table, key, where = mutate(fed)
    rc, rep = cli_json(fed, "report")
    assert rc == 1 and rep["consistent"] is False
    assert key in rep["entities"][table][where], rep["entities"][table]
    assert all(not (e["missing_in_db"] or e["missing_in_files"] or e["different"])
               for name, e in rep["entities"].items()
               if name != table and not (table == "sessions" and name.startswith("session_")))
    if where == "different":
        assert rep["entities"][table]["diffs"] and rep["entities"][table]["diffs"][0]["key"] == key

    files_before, rows_before = snapshot(fed.root), db_rows(fed.store())
    dry = cli(fed, "sync", "--to", repair, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "would change" in dry.stdout and key.split("/")[0] in dry.stdout
    assert snapshot(fed.root) == files_before and db_rows(fed.store()) == rows_before
    assert cli(fed, "report").returncode == 1

    done = cli(fed, "sync", "--to", repair, phase=SAFE_PHASE[repair])
    assert done.returncode == 0, done.stderr
    rc, rep = cli_json(fed, "report")
    assert rc == 0 and rep["consistent"] is True, rep


def test_sync_to_db_takes_the_file_value_and_sync_to_files_the_db_value(migrated):
    """The named side is the one rewritten: the other side's value wins."""
    fed = migrated
    _table, key, _ = file_changed(fed)
    pid, voter = key.split("/")
    file_value = json.loads((fed.root / "shared" / "polls.json").read_text())[pid]["votes"][voter]
    assert cli(fed, "sync", "--to", "db", phase=2).returncode == 0
    assert fed.store().load_poll(pid)["votes"][voter] == file_value

    row_changed(fed)
    assert cli(fed, "sync", "--to", "files", phase=3).returncode == 0
    doc = json.loads((fed.root / "nodes" / "agent-001" / "context_window.json").read_text())
    assert doc["text"] == "changed in the db"


def test_sync_to_files_makes_a_rollback_to_phase1_exact(migrated):
    """After drift in phase 3 and `sync --to files`, phase 1 shows exactly what phase 3 showed."""
    fed = migrated
    row_changed(fed)
    row_deleted(fed)
    fed.store().db.write(lambda tx: tx.execute("UPDATE votes SET option = 'option-0'"))
    fed.phase(3)
    phase3 = api_view()
    assert cli(fed, "sync", "--to", "files").returncode == 0
    fed.phase(1)
    assert api_view() == phase3


def test_different_records_carry_a_field_level_diff(migrated):
    """The first differing records of a table come with field, file value and database value."""
    fed = migrated
    row_changed(fed)
    rep = build_report(settings=config.settings())
    diffs = rep.entities["context"].diffs
    assert [(d["key"], d["field"], d["db"]) for d in diffs] == [("agent-001", "text", "changed in the db")]
    human = cli(fed, "report")
    assert human.returncode == 1
    assert "agent-001  text:" in human.stdout and "changed in the db" in human.stdout


def test_read_messages_have_no_file_counterpart(migrated):
    """A message claimed in phase 3 (read_at set, file deleted) keeps the report consistent."""
    fed = migrated
    fed.phase(3)
    claimed = messaging.check_inbox("agent-002")
    assert claimed
    rep = build_report(settings=config.settings())
    assert rep.consistent
    assert rep.entities["messages"].files == 40 - len(claimed)


def test_report_does_not_create_a_missing_database(fed):
    """Run before any migration, the report lists every row as missing in the database and creates nothing."""
    if fed.env.get("FEDERATION_DB_URL"):
        pytest.skip("a PostgreSQL database always exists")
    generate(fed.root, agents=2, messages=4, polls=1, sessions=0)
    rc, rep = cli_json(fed, "report")
    assert rc == 1
    assert len(rep["entities"]["messages"]["missing_in_db"]) == 4
    assert not fed.db_path.exists()


def test_plan_script_is_the_report_command(migrated):
    """scripts/consistency_report.py runs the same command with the same exit codes."""
    fed = migrated
    run = [sys.executable, os.path.join(REPO, "scripts", "consistency_report.py"), "--json"]
    proc = subprocess.run(run, env=fed.subprocess_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and json.loads(proc.stdout)["consistent"] is True
    row_deleted(fed)
    proc = subprocess.run(run, env=fed.subprocess_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1


def test_log_summary_counts_shadow_events_per_entity(migrated, tmp_path):
    """--log FILE: shadow_mismatch / shadow_error events of a real structlog JSON log, counted per entity,
    with the consistency rate over the period from the counted comparisons; other lines are ignored."""
    fed = migrated
    log = tmp_path / "federation.log"
    path = fed.root / "nodes" / "agent-001" / "context_window.json"
    doc = json.loads(path.read_text())
    doc["text"] = "edited by hand"
    path.write_text(json.dumps(doc))
    # a real process in phase 3, logging as the CLI and the server do: two reads, each a mismatch
    code = ("from federation import _logging, context; _logging.configure(); "
            "context.get_context('agent-001'); context.get_context('agent-001'); context.heartbeat('agent-002')")
    proc = subprocess.run([sys.executable, "-c", code], env={**fed.subprocess_env(3), "FEDERATION_LOG_FILE": str(log)},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    with open(log, "a") as fh:
        fh.write("not json\n")
        fh.write(json.dumps({"event": "shadow_error", "entity": "votes", "key": "p1", "phase": 2,
                             "timestamp": "2099-01-01T00:00:00Z"}) + "\n")
    rc, rep = cli_json(fed, "report", "--log", str(log))
    assert rc == 1  # the hand edit is still there
    summary = rep["log"]
    assert summary["entities"]["context"]["shadow_mismatch"] == 2
    assert summary["entities"]["context"]["keys"] == 1
    assert summary["entities"]["votes"]["shadow_error"] == 1
    records = rep["entities"]["context"]["files"]
    # the rate comes from the comparisons the process counted: two reads, both mismatched
    assert summary["rate_source"] == "counted"
    context_summary = summary["entities"]["context"]
    assert (context_summary["comparisons"], context_summary["mismatches"]) == (2, 2)
    assert context_summary["consistency_rate"] == 0.0
    assert context_summary["records_rate"] == pytest.approx(1 - 1 / records)  # the former proxy, kept
    assert summary["unreadable_lines"] == 1 and summary["last"] == "2099-01-01T00:00:00Z"
    assert summary["consistency_rate"] == 0.0 and 0 < summary["records_rate"] < 1
    human = cli(fed, "report", "--log", str(log))
    assert "consistency rate over the period: 0.000000 (2 mismatches in 2 counted comparisons)" in human.stdout


def test_log_that_does_not_exist_is_a_usage_error(fed, tmp_path):
    """report --log with a missing file exits 2."""
    assert cli(fed, "report", "--log", str(tmp_path / "nope.log")).returncode == 2


def test_sync_dry_run_without_a_database_creates_nothing(fed, tmp_path):
    """sync --dry-run before any migration lists every file row as an upsert and creates no database,
    no lock file, nothing."""
    if fed.env.get("FEDERATION_DB_URL"):
        pytest.skip("a PostgreSQL database always exists")
    generate(fed.root, agents=2, messages=3, polls=1, sessions=1)
    before = snapshot(tmp_path)
    for side in ("db", "files"):
        rc, out = cli_json(fed, "sync", "--to", side, "--dry-run")
        assert rc == 0 and out["dry_run"] is True
        assert out["changes"], side
    assert snapshot(tmp_path) == before and not fed.db_path.exists()
    actions = {(c["action"], c["target"]) for c in cli_json(fed, "sync", "--to", "db", "--dry-run")[1]["changes"]}
    assert ("upsert", "messages") in actions and ("upsert", "polls") in actions


def test_sync_when_consistent_changes_nothing(migrated):
    """sync on agreeing sides reports zero changes and leaves both sides as they were."""
    fed = migrated
    before_files, before_rows = snapshot(fed.root), db_rows(fed.store())
    for side in ("db", "files"):
        rc, out = cli_json(fed, "sync", "--to", side, phase=SAFE_PHASE[side])
        assert rc == 0 and out["changes"] == []
    assert db_rows(fed.store()) == before_rows
    assert {k: v for k, v in snapshot(fed.root).items() if not k.startswith(".locks")} == before_files
    context.get_context("agent-000")  # still readable
