"""The command line: status, demo, --root/--db, clean errors."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from federation import config, governance
from federation.cli import main


def test_status_before_any_database(fed):
    """status on a fresh root says where things are and that no database exists yet."""
    result = CliRunner().invoke(main, ["status", "--root", str(fed.root), "--db", str(fed.db_path)])
    assert result.exit_code == 0, result.output
    assert f"root:      {fed.root}" in result.output
    assert "database not created yet" in result.output
    assert not fed.db_path.exists()


def test_status_json_counts_rows(fed):
    """status --json reports the fleet's phase, this process's pin and a row count for every table."""
    fed.phase(4)
    pid = governance.create_poll("alice", "q?", ["a", "b"])
    governance.vote(pid, "bob", "a")
    result = CliRunner().invoke(main, ["status", "--json", "--root", str(fed.root), "--db", str(fed.db_path)])
    data = json.loads(result.output)
    # no flag on a new federation: the unpinned fleet runs the default, phase 3; this process is pinned to 4
    assert data["phase"] == 3 and data["pinned_phase"] == 4 and data["engine"] == fed.engine
    assert data["tables"]["polls"] == 1 and data["tables"]["votes"] == 1 and data["tables"]["messages"] == 0


def test_demo_runs_agents_and_prints_status(fed):
    """demo runs several agents' operations through the shim and ends with the status table."""
    result = CliRunner().invoke(main, ["demo", "--agents", "4", "--root", str(fed.root), "--db", str(fed.db_path)])
    assert result.exit_code == 0, result.output
    assert "demo: 4 agents, 3 messages delivered" in result.output
    assert "phase:     3 (database first, files shadow)" in result.output
    assert "votes              4" in result.output
    assert (fed.root / "shared" / "polls.json").exists()  # phase 3 also wrote the files


def test_root_flag_wins_over_environment(fed, tmp_path):
    """--root and --db win over FEDERATION_ROOT / FEDERATION_DB."""
    other = tmp_path / "elsewhere"
    result = CliRunner().invoke(main, ["status", "--json", "--root", str(other), "--db", str(other / "x.db")])
    data = json.loads(result.output)
    # --db names the SQLite file; FEDERATION_DB_URL, when set, selects PostgreSQL instead
    assert data["root"] == str(other) and data["database"] == (fed.db_url or str(other / "x.db"))


def test_storage_error_is_one_line(fed, tmp_path):
    """A storage failure is reported as one 'error:' line with exit 1, never a traceback."""
    blocker = tmp_path / "file-not-dir"
    blocker.write_text("x")
    if fed.engine == "postgresql":  # a database that does not exist on the server
        fed.env["FEDERATION_DB_URL"] = fed.db_url.rsplit("/", 1)[0] + "/no_such_database"
        fed.apply()
    result = CliRunner().invoke(main, ["demo", "--root", str(fed.root), "--db", str(blocker / "db.sqlite")])
    assert result.exit_code == 1
    assert result.stderr.count("error:") == 1
    assert "Traceback" not in result.output + result.stderr


def test_a_reader_that_goes_away_ends_the_command_quietly(fed):
    """`federation report | head -1`: the reader closes the pipe; the command exits 0, no traceback, no
    "Broken pipe" on stderr (issue 29)."""
    import subprocess
    import sys

    from federation.domain.generate import generate

    generate(fed.root, agents=2, messages=3, polls=1, sessions=1)
    env = fed.subprocess_env(phase=1)
    for args in (["report"], ["status"], ["migrate", "--dry-run"]):
        proc = subprocess.Popen([sys.executable, "-m", "federation", *args], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        proc.stdout.close()  # gone before the first line is written
        err = proc.stderr.read().decode()
        assert proc.wait(timeout=60) == 0, (args, err)
        assert "Broken pipe" not in err and "Traceback" not in err, (args, err)


def test_agents_add_makes_the_root_on_a_fresh_machine_and_listing_does_not(tmp_path):
    """`agents add` makes the configured federation root like `demo` does (issue 29: it exited 2 on a fresh
    machine); `agents list`, which only inspects, still refuses a missing root (exit 2) and makes nothing,
    and so does `agents add --root` with a path that does not exist (mistyped: tests/test_mcp_http.py)."""
    import subprocess
    import sys

    root = tmp_path / "fresh" / "federation"
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("FEDERATION_")}
    env["FEDERATION_ROOT"] = str(root)
    listed = subprocess.run([sys.executable, "-m", "federation", "agents", "list"], env=env, capture_output=True,
                            text=True, timeout=60)
    assert listed.returncode == 2 and not root.exists()
    added = subprocess.run([sys.executable, "-m", "federation", "agents", "add", "alice"], env=env,
                           capture_output=True, text=True, timeout=60)
    assert added.returncode == 0, added.stderr
    assert len(added.stdout.strip()) >= 32 and (root / "control" / "agents.json").is_file()


@pytest.mark.sqlite_only  # FEDERATION_DB_URL (the PostgreSQL runs) wins over a --db file
def test_a_mistyped_database_folder_is_refused_and_not_created(fed, tmp_path):
    """`migrate --db` in a folder that does not exist: a usage error (exit 2) naming the folder, and neither
    the folder nor a database is created (it was: a new database in new folders, migrated into)."""
    missing = tmp_path / "typo" / "state"
    result = CliRunner().invoke(main, ["migrate", "--root", str(fed.root), "--db", str(missing / "x.db")])
    assert result.exit_code == 2, result.output
    assert "typo/state" in result.stderr and "does not exist" in result.stderr
    assert not (tmp_path / "typo").exists()
