"""Unknown is never empty, on the operator's side (CONTRACT "Unknown is never empty"): `migrate` lists the
documents it could not import and fails until an operator accepts each (`--accept PATH --reason TEXT`),
the defaults when the flag or the database cannot answer are the files, a process that writes creates
the root, and `status` says which phase the unpinned fleet runs and which this shell is pinned to.

Real processes and the real CLI; every case that involves a database on SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from federation.domain.generate import generate

from test_rollout import REPO, run_cli, unpinned_env


def _probe(fed, code: str, env: dict) -> dict:
    """Run *code* (which prints one JSON line last) in a real process of this federation."""
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                          cwd=str(REPO))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.splitlines()[-1])


# ---------------------------------------------------------------------------
# defaults when something cannot answer

PEEK = ("import json; from federation import config, messaging, rollout; "
        "got = messaging.peek_inbox('agent-001'); print(json.dumps({'ids': sorted(m['id'] for m in got), "
        "'phase': rollout.phase_in_effect(config.settings())['phase']}))")


def test_unreadable_flag_and_a_database_without_schema_mean_the_files(fed):
    """An un-migrated legacy tree, a torn flag and no history, a database that exists without the schema
    (a SQLite file, a PostgreSQL database): an unpinned process serves the files (phase 1), it does not fail
    with BackfillRequiredError in phase 3; `status` says phase 1; the database gets no schema by being asked."""
    generate(fed.root, agents=3, messages=9, polls=1, sessions=1)
    expected = sorted(p.stem for p in (fed.root / "nodes" / "agent-001" / "inbox").glob("*.json"))
    assert expected
    (fed.root / "control").mkdir()
    (fed.root / "control" / "flag.json").write_text('{"phase": 3, "sample"')  # torn
    if fed.engine == "sqlite":
        fed.db_path.touch()  # the file exists, the schema does not
    got = _probe(fed, PEEK, unpinned_env(fed))
    assert got == {"ids": expected, "phase": 1}
    status = run_cli(fed, "status", "--json")
    assert status.returncode == 0, status.stderr[-2000:]
    assert json.loads(status.stdout)["phase"] == 1
    assert json.loads(status.stdout)["tables"] is None  # no schema was created by asking


@pytest.mark.sqlite_only  # an unreachable PostgreSQL is retried for a minute before it counts as one
def test_unreadable_database_means_the_files_on_a_legacy_tree(fed, tmp_path):
    """No flag, and a database that cannot be opened (a path under a file): the default is phase 1 on a
    legacy tree, and the files serve (it was phase 3, every call failing)."""
    generate(fed.root, agents=2, messages=4, polls=0, sessions=0)
    expected = sorted(p.stem for p in (fed.root / "nodes" / "agent-001" / "inbox").glob("*.json"))
    (tmp_path / "db.sqlite").mkdir()  # a folder where the database file should be: it exists, it cannot be read
    env = unpinned_env(fed, FEDERATION_DB=str(tmp_path / "db.sqlite"))
    assert _probe(fed, PEEK, env) == {"ids": expected, "phase": 1}


# ---------------------------------------------------------------------------
# status: the fleet's phase and this shell's pin, each labelled


def test_status_shows_the_fleets_phase_and_the_shells_pin(fed):
    """The live flag at 2: an unpinned shell's `status` says phase 2 and no pin (it said phase 3); a shell
    pinned to 3 (FEDERATION_PHASE) says phase 2 for the fleet and its own pin 3, both labelled."""
    fed.root.mkdir(exist_ok=True)
    assert run_cli(fed, "rollout", "set", "2", "--force", "--reason", "test set-up").returncode == 0
    unpinned = run_cli(fed, "status", "--json")
    assert unpinned.returncode == 0, unpinned.stderr[-2000:]
    data = json.loads(unpinned.stdout)
    assert (data["phase"], data["pinned_phase"], data["phase_source"]) == (2, None, "flag")
    text = run_cli(fed, "status").stdout
    assert "phase:     2 (files first, database shadow): what unpinned processes run (the live flag)" in text
    assert "pinned:    no (this shell follows the flag)" in text and "phase:     3" not in text

    pinned = run_cli(fed, "status", "--json", FEDERATION_PHASE="3", FEDERATION_USE_DB="1")
    data = json.loads(pinned.stdout)
    assert (data["phase"], data["pinned_phase"]) == (2, 3)
    text = run_cli(fed, "status", FEDERATION_PHASE="3", FEDERATION_USE_DB="1").stdout
    assert "phase:     2 (files first, database shadow): what unpinned processes run" in text
    assert "pinned:    3 (database first, files shadow): this shell's own FEDERATION_PHASE" in text


# ---------------------------------------------------------------------------
# a database-only federation can be operated


def test_a_phase_4_write_creates_the_root_and_the_operator_commands_work(fed):
    """A process pinned to phase 4 writes to the database of a root that does not exist: the root is created
    (it was not, and `doctor`, `status`, `rollout status` exited 2 "the federation root … does not exist");
    then the flag can be set to 4 and the three commands answer with their normal codes."""
    import shutil

    shutil.rmtree(fed.root, ignore_errors=True)
    env = fed.subprocess_env(phase=4)
    sent = _probe(fed, "import json; from federation import messaging; "
                       "print(json.dumps(messaging.send_message('alice', 'bob', 'hi')))", env)
    assert sent and fed.root.is_dir()
    assert not (fed.root / "nodes").exists()  # phase 4 writes no legacy file
    assert run_cli(fed, "rollout", "set", "4", "--force", "--reason", "a database-only federation").returncode == 0
    doctor = run_cli(fed, "doctor", "--json")
    assert doctor.returncode == 0, doctor.stdout[-3000:] + doctor.stderr[-2000:]
    status = run_cli(fed, "status", "--json")
    assert status.returncode == 0, status.stderr[-2000:]
    data = json.loads(status.stdout)
    assert (data["phase"], data["tables"]["messages"]) == (4, 1)
    rollout_status = run_cli(fed, "rollout", "status")
    assert rollout_status.returncode == 0, rollout_status.stderr[-2000:]
    assert "flag:" in rollout_status.stdout


# ---------------------------------------------------------------------------
# migrate never says ok when content stayed behind; --accept records the operator's decision


def _doctor_legacy_files(fed) -> dict:
    proc = run_cli(fed, "doctor", "--json")
    return next(c for c in json.loads(proc.stdout)["checks"] if c["name"] == "legacy_files")


def test_a_document_with_no_place_fails_migrate_until_accepted_and_again_once_changed(fed):
    """`nodes/bob/outbox.json`, a list of 2 messages some legacy code keeps (the layout has no place for it; an
    `inbox.json` list file is imported as messages since issue 26): `migrate` (dry run, real,
    --json) lists it as not imported with records 2 and exits 3 (it said "ok: every file migrated"); doctor
    fails on it. `--accept PATH --reason` records it in control/accepted.jsonl: then migrate exits 0 and
    doctor passes that check. The file changes: both fail again."""
    generate(fed.root, agents=2, messages=4, polls=1, sessions=0)
    inbox = fed.root / "nodes" / "bob" / "outbox.json"
    inbox.parent.mkdir(parents=True)
    inbox.write_text(json.dumps([{"id": "m1", "sender": "alice", "content": "read the plan"},
                                 {"id": "m2", "sender": "carol", "content": "and the runbook"}]))
    listed = [{"path": str(inbox), "records": 2, "bytes": inbox.stat().st_size}]
    for args in (("migrate", "--dry-run", "--json"), ("migrate", "--json")):
        proc = run_cli(fed, *args)
        assert proc.returncode == 3, proc.stderr[-2000:]
        assert json.loads(proc.stdout)["not_imported"] == listed
    text = run_cli(fed, "migrate")
    assert text.returncode == 3 and "NOT imported" in text.stdout and f"{inbox}: 2 records" in text.stdout
    assert "ok:" not in text.stdout
    assert not _doctor_legacy_files(fed)["ok"]

    assert run_cli(fed, "migrate", "--accept", "nodes/bob/outbox.json").returncode == 2  # no reason: usage
    done = run_cli(fed, "migrate", "--accept", "nodes/bob/outbox.json", "--reason", "an old client's cache")
    assert done.returncode == 0, done.stderr[-2000:]
    record = json.loads((fed.root / "control" / "accepted.jsonl").read_text().splitlines()[-1])
    assert (record["path"], record["reason"], record["listed_as"], record["records"]) == (
        "nodes/bob/outbox.json", "an old client's cache", "not imported", 2)
    assert len(record["sha256"]) == 64 and record["by"] and record["at"]
    after = run_cli(fed, "migrate", "--json")
    assert after.returncode == 0, after.stdout[-2000:]
    data = json.loads(after.stdout)
    assert data["not_imported"] == [] and [a["path"] for a in data["accepted"]] == [str(inbox)]
    assert _doctor_legacy_files(fed)["ok"]

    inbox.write_text(inbox.read_text()[:-1] + ', {"id": "m3", "sender": "dave", "content": "new"}]')
    again = run_cli(fed, "migrate", "--json")
    assert again.returncode == 3
    assert json.loads(again.stdout)["not_imported"] == [{"path": str(inbox), "records": 3,
                                                         "bytes": inbox.stat().st_size}]
    assert not _doctor_legacy_files(fed)["ok"]


def test_an_accepted_malformed_file_clears_and_other_paths_are_refused(fed):
    """A torn context file is invalid: migrate exits 3 and doctor fails (accepting it never cleared before);
    accepted by its absolute path, migrate exits 0 and doctor passes. A path that is listed as neither, or
    outside the root, is refused (exit 1, nothing recorded); so is --dry-run with --accept (usage, exit 2)."""
    generate(fed.root, agents=2, messages=2, polls=0, sessions=0)
    torn = fed.root / "nodes" / "agent-000" / "context_window.json"
    torn.write_text('{"agent": "agent-000", "text": "half')
    proc = run_cli(fed, "migrate", "--json")
    assert proc.returncode == 3 and [i["path"] for i in json.loads(proc.stdout)["invalid"]] == [str(torn)]
    assert not _doctor_legacy_files(fed)["ok"]
    assert "move it out of the root" not in _doctor_legacy_files(fed)["fix"]

    for path in ("nodes/agent-001/context_window.json", "../elsewhere.json"):
        refused = run_cli(fed, "migrate", "--accept", path, "--reason", "no")
        assert refused.returncode == 1 and "error:" in refused.stderr, refused.stderr[-2000:]
    assert run_cli(fed, "migrate", "--dry-run", "--accept", str(torn), "--reason", "x").returncode == 2
    assert not (fed.root / "control" / "accepted.jsonl").exists()

    done = run_cli(fed, "migrate", "--accept", str(torn), "--reason", "agent-000 rewrites it at its next heartbeat")
    assert done.returncode == 0, done.stderr[-2000:]
    after = run_cli(fed, "migrate", "--json")
    assert after.returncode == 0, after.stdout[-2000:]
    data = json.loads(after.stdout)
    assert data["invalid"] == [] and [a["path"] for a in data["accepted"]] == [str(torn)]
    check = _doctor_legacy_files(fed)
    assert check["ok"] and "accepted" in check["detail"]
