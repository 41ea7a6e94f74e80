"""``federation backup``: a verified online copy of a live SQLite database, and its restore."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from federation import config, governance, messaging
from federation.operations.backup import backup
from federation.errors import FederationError, ValidationError
from federation.stores.sqlstore import forget_stores

VOTER = """
import os, sys
from federation import governance
poll, me, acks, stop = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
with open(acks, "w", buffering=1) as out:
    n = 0
    while not os.path.exists(stop):
        governance.vote(poll, f"{me}-{n}", "yes" if n % 2 else "no")
        out.write(f"{me}-{n}\\n")  # acknowledged: written only after the vote returned (committed)
        n += 1
"""


def _cli(fed, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "federation", *args], env=fed.subprocess_env(), capture_output=True,
                          text=True, timeout=180)


def _acked(paths: list[Path]) -> set[str]:
    out = set()
    for path in paths:
        if path.exists():
            out.update(line for line in path.read_text().splitlines() if line)  # a torn last line is still writing
    return out


@pytest.mark.sqlite_only
def test_backup_during_eight_writers_holds_every_vote_acknowledged_before_it_began(fed, tmp_path):
    """8 voting processes keep writing; the copy passes integrity_check and holds every earlier-acknowledged vote."""
    fed.phase(4)
    poll = governance.create_poll("lead", "Ship it?", ["yes", "no"])
    stop = tmp_path / "stop"
    acks = [tmp_path / f"acks-{i}" for i in range(8)]
    procs = [fed.spawn(VOTER, poll, f"p{i}", str(acks[i]), str(stop), phase=4) for i in range(8)]
    try:
        deadline = time.monotonic() + 60
        while len(_acked(acks)) < 400 and time.monotonic() < deadline:
            time.sleep(0.05)
        before = _acked(acks)  # every line here was a committed vote before the backup started
        proc = _cli(fed, "backup", "--to", str(tmp_path / "copy.db"), "--json")
        during = _acked(acks)
    finally:
        stop.touch()
        for p in procs:
            _, err = p.communicate(timeout=120)
            assert p.returncode == 0, err[-2000:]
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["integrity"] == "ok" and result["path"] == str(tmp_path / "copy.db")
    assert len(before) >= 400 and len(during) > len(before)  # writers were running while it copied
    conn = sqlite3.connect(tmp_path / "copy.db")
    assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    copied = {r[0] for r in conn.execute("SELECT voter FROM votes WHERE poll_id = ?", (poll,))}
    conn.close()
    assert before <= copied, f"{len(before - copied)} acknowledged votes missing from the backup"
    assert [p.name for p in tmp_path.iterdir() if "backup-tmp" in p.name] == []


@pytest.mark.sqlite_only
def test_restore_a_backup_and_read_it_through_the_api(fed, tmp_path):
    """The README's restore: copy the backup over the database file; the API serves what was backed up."""
    fed.phase(4)
    poll = governance.create_poll("alice", "Restore works?", ["yes", "no"])
    governance.vote(poll, "bob", "yes")
    mid = messaging.send_message("alice", "bob", "kept in the backup")
    result = backup(tmp_path / "saved.db", settings=config.settings())
    assert Path(result.path).stat().st_size == result.bytes and result.schema_version >= 1
    messaging.send_message("alice", "bob", "after the backup: lost by the restore")
    # restore: stop the agents, replace the database and its WAL files, start again
    forget_stores()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{fed.db_path}{suffix}").unlink(missing_ok=True)
    fed.db_path.write_bytes(Path(result.path).read_bytes())
    config.reset()
    assert governance.get_poll(poll)["votes"] == {"bob": "yes"}
    assert [m["id"] for m in messaging.check_inbox("bob")] == [mid]


@pytest.mark.sqlite_only
def test_backup_refuses_an_existing_target_or_a_missing_folder_with_exit_2(fed, tmp_path):
    """A target that exists (kept byte for byte) or a folder that does not: exit 2, a clear error, nothing written."""
    fed.phase(4)
    governance.create_poll("alice", "x?", ["a", "b"])
    existing = tmp_path / "existing.db"
    existing.write_bytes(b"precious")
    proc = _cli(fed, "backup", "--to", str(existing))
    assert proc.returncode == 2 and "already exists" in proc.stderr and str(existing) in proc.stderr
    assert existing.read_bytes() == b"precious"
    missing = tmp_path / "no" / "such" / "folder" / "b.db"
    proc = _cli(fed, "backup", "--to", str(missing))
    assert proc.returncode == 2 and "does not exist" in proc.stderr and str(missing.parent) in proc.stderr
    assert not (tmp_path / "no").exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    with pytest.raises(ValidationError):
        backup(existing, settings=config.settings())


@pytest.mark.sqlite_only
def test_backup_of_a_missing_database_fails_with_exit_1(fed, tmp_path):
    """No database yet: exit 1 naming the path; no file written."""
    fed.phase(1)
    proc = _cli(fed, "backup", "--to", str(tmp_path / "b.db"))
    assert proc.returncode == 1 and str(fed.db_path) in proc.stderr
    assert not (tmp_path / "b.db").exists()


@pytest.mark.postgresql_only
def test_backup_on_postgresql_exits_1_with_the_pg_dump_command_without_password(fed, tmp_path):
    """PostgreSQL: exit 1 and the pg_dump command to use, the password redacted."""
    proc = _cli(fed, "backup", "--to", str(tmp_path / "b.dump"))
    assert proc.returncode == 1, proc.stderr
    assert "pg_dump --format=custom" in proc.stderr and str(tmp_path / "b.dump") in proc.stderr
    assert not (tmp_path / "b.dump").exists()
    with config.override(FEDERATION_DB_URL="postgresql://fed_user:s3cret@db.example:5432/federation"
                                           "?password=s3cret&sslmode=require"):
        with pytest.raises(FederationError, match="pg_dump") as exc:
            backup(tmp_path / "c.dump", settings=config.settings())
    assert "s3cret" not in str(exc.value)
    assert "'postgresql://fed_user@db.example:5432/federation?sslmode=require'" in str(exc.value)
    assert os.listdir(tmp_path) == ["fed"]  # the root only: no dump, no temp file
