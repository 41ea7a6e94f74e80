"""``federation doctor``: each check passes on a healthy federation and fails, with its fix, on its fault."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys

import pytest

from federation import config, governance, messaging
from federation.operations.doctor import doctor
from federation.stores.sqlstore import forget_stores

NAMES = {"network_filesystem", "database_integrity", "schema_version", "wal_size", "free_space_database",
         "free_space_root", "legacy_files", "backfilled", "files_vs_database", "fleet_phases", "dead_letters",
         "control_files", "unannounced_writers", "open_file_limit"}


def _cli(fed, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "federation", *args], env=fed.subprocess_env(), capture_output=True,
                          text=True, timeout=120)


def _seed(fed, phase: int = 3) -> str:
    fed.phase(phase)
    pid = governance.create_poll("alice", "Healthy?", ["yes", "no"])
    governance.vote(pid, "bob", "yes")
    messaging.send_message("alice", "bob", "hello")
    return pid


def _check(report, name: str):
    return next(c for c in report.checks if c.name == name)


def test_healthy_federation_passes_every_check_and_exits_0(fed):
    """Phase 3 with data on both sides: healthy, exit 0, the CONTRACT's JSON shape."""
    _seed(fed)
    proc = _cli(fed, "doctor", "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads(proc.stdout)
    assert data["healthy"] is True
    names = {c["name"] for c in data["checks"]}
    expected = NAMES - ({"free_space_database", "network_filesystem"} if fed.engine == "postgresql" else set())
    assert names == expected
    assert all(set(c) == {"name", "ok", "detail", "fix"} and c["ok"] and c["fix"] is None for c in data["checks"])


@pytest.mark.parametrize("phase, fix", [(2, "federation sync --to db"), (3, "federation sync --to files")])
def test_files_and_database_differing_fails_with_the_sync_that_repairs_it(fed, phase, fix):
    """A message file removed behind the shim's back: exit 1 with the phase's sync; after running it, healthy."""
    _seed(fed, phase)
    from federation import core

    inbox = core.tree().inbox("bob")
    for path in inbox.iterdir():
        path.unlink()
    proc = _cli(fed, "doctor")
    assert proc.returncode == 1
    assert "FAIL  files_vs_database" in proc.stdout and f"fix: {fix}" in proc.stdout
    report = doctor(settings=config.settings())
    assert not report.healthy and _check(report, "files_vs_database").fix == fix
    assert _cli(fed, *fix.split()[1:]).returncode == 0
    assert doctor(settings=config.settings()).healthy


def test_phase_4_difference_is_expected_and_only_noted(fed):
    """Phase 4 no longer writes the files: a difference is reported as a note, not a failure."""
    _seed(fed, 3)
    fed.phase(4)
    messaging.send_message("alice", "bob", "database only")
    check = _check(doctor(settings=config.settings()), "files_vs_database")
    assert check.ok and "sync --to files" in check.detail


def test_unreadable_legacy_file_fails_with_the_migration_dry_run(fed):
    """A truncated profile file: legacy_files fails naming it and its reason."""
    _seed(fed)
    bad = fed.root / "nodes" / "carol" / "profile.json"
    bad.parent.mkdir(parents=True)
    bad.write_text('{"agent": "carol", "traits": {')
    check = _check(doctor(settings=config.settings()), "legacy_files")
    assert not check.ok and str(bad) in check.detail and "invalid JSON" in check.detail
    assert "federation migrate --dry-run" in check.fix


@pytest.mark.sqlite_only
def test_corrupted_database_fails_integrity_and_is_not_touched(fed):
    """Garbage in the database file: database_integrity fails with the restore as fix; the file is unchanged."""
    _seed(fed)
    forget_stores()
    data = bytearray(fed.db_path.read_bytes())
    data[100:4096] = b"\xff" * 3996  # the first page, header aside
    fed.db_path.write_bytes(bytes(data))
    for suffix in ("-wal", "-shm"):
        (fed.db_path.parent / (fed.db_path.name + suffix)).unlink(missing_ok=True)
    before = fed.db_path.read_bytes()
    proc = _cli(fed, "doctor", "--json")
    assert proc.returncode == 1
    checks = {c["name"]: c for c in json.loads(proc.stdout)["checks"]}
    assert not checks["database_integrity"]["ok"] and "restore the last verified backup" in \
        checks["database_integrity"]["fix"]
    assert fed.db_path.read_bytes() == before


@pytest.mark.sqlite_only
def test_newer_schema_fails_with_the_upgrade(fed):
    """A database from a newer package: schema_version fails with pip install --upgrade."""
    _seed(fed)
    fed.store().db.write(lambda tx: tx.execute(
        "INSERT INTO schema_version (version, applied_at) VALUES (99, 'later')"))
    check = _check(doctor(settings=config.settings()), "schema_version")
    assert not check.ok and "99" in check.detail and "pip install --upgrade" in check.fix


@pytest.mark.sqlite_only
def test_wal_over_its_limit_fails_with_the_checkpoint_command(fed):
    """A WAL above the limit: wal_size fails with the checkpoint; once checkpointed, it passes."""
    _seed(fed)
    check = _check(doctor(wal_limit=1, settings=config.settings()), "wal_size")
    assert not check.ok and "wal_checkpoint(TRUNCATE)" in check.fix
    conn = sqlite3.connect(fed.db_path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    assert _check(doctor(wal_limit=1, settings=config.settings()), "wal_size").ok


@pytest.mark.sqlite_only
def test_sqlite_on_a_network_filesystem_fails(fed, tmp_path):
    """The project's network-filesystem detection: a database folder mounted over NFS fails the check."""
    _seed(fed)
    mounts = tmp_path / "mounts"
    mounts.write_text(f"rootfs / ext4 rw 0 0\nserver:/export {fed.db_path.parent} nfs4 rw 0 0\n")
    check = _check(doctor(mounts_file=str(mounts), settings=config.settings()), "network_filesystem")
    assert not check.ok and "nfs4" in check.detail and "FEDERATION_DB_URL=postgresql://" in check.fix


def test_never_backfilled_database_fails_in_phase_3(fed):
    """Legacy files and a database never backfilled: phase 3 would refuse it; the fix is the migration."""
    _seed(fed, 1)  # files only
    fed.phase(3)
    store = fed.store()
    store.db.ensure_schema()  # a database created while legacy files exist: not backfilled
    check = _check(doctor(settings=config.settings()), "backfilled")
    assert not check.ok and check.fix == "federation migrate"
    assert _cli(fed, "migrate").returncode == 0
    assert doctor(settings=config.settings()).healthy


def test_free_space_on_the_root_filesystem(fed, small_fs):
    """A full filesystem under the root fails free_space_root; freeing it passes again."""
    small_fs.mount(fed.root, "1m")
    _seed(fed)
    filler = small_fs.fill(fed.root)
    check = _check(doctor(settings=config.settings()), "free_space_root")
    assert not check.ok and str(fed.root) in check.detail and "federation prune" in check.fix
    filler.unlink()
    assert _check(doctor(settings=config.settings()), "free_space_root").ok


@pytest.mark.postgresql_only
def test_unreachable_postgresql_fails_integrity(fed):
    """A server that does not answer: database_integrity fails, saying how to check the server."""
    with config.override(FEDERATION_DB_URL="postgresql://nobody@127.0.0.1:1/none?connect_timeout=2"):
        report = doctor(settings=config.settings())
    check = _check(report, "database_integrity")
    assert not check.ok and "pg_isready" in check.fix and not report.healthy


def test_unsafe_mix_of_phases_in_the_fleet_fails_with_the_safe_step(fed):
    """A live phase-4 process beside a live phase-2 one: fleet_phases fails naming both, fix `rollout set 3`."""
    from test_rollout import unpinned_env, wait_for

    from federation import rollout

    _seed(fed, 3)
    assert _check(doctor(settings=config.settings()), "fleet_phases").ok
    code = "from federation import context; import time; context.heartbeat('p'); time.sleep(120)"
    procs = {}
    try:
        for phase in (2, 4):
            procs[phase] = subprocess.Popen([sys.executable, "-c", code],
                                            env={**unpinned_env(fed), "FEDERATION_PHASE": str(phase)},
                                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        pids = {p.pid for p in procs.values()}
        wait_for(lambda: pids <= {p["pid"] for p in rollout.fleet(settings=config.settings()) if p["alive"]}, 30, what="both announced")
        check = _check(doctor(settings=config.settings()), "fleet_phases")
        assert not check.ok and "federation rollout set 3" in check.fix
        assert f":{procs[4].pid} in phase 4 beside " in check.detail and f":{procs[2].pid} in phase 2" in check.detail
        proc = _cli(fed, "doctor", "--json")
        assert proc.returncode == 1 and not {c["name"]: c for c in json.loads(proc.stdout)["checks"]}[
            "fleet_phases"]["ok"]
    finally:
        for p in procs.values():
            p.kill()
            p.wait()


@pytest.mark.parametrize("phase", [2, 4])
def test_dead_letters_are_counted_with_the_oldest_age(fed, phase, monkeypatch):
    """A message delivered the maximum times and never acknowledged: doctor shows the count and its age
    (on the side the phase serves), and says how to list and clear them."""
    import time

    fed.phase(phase)
    monkeypatch.setenv("FEDERATION_MAX_ATTEMPTS", "1")
    messaging.send_message("alice", "bob", "poison")
    assert len(messaging.receive("bob", lease=0.1)) == 1
    time.sleep(0.2)
    # due (its last lease over) before any receive marks it: counted already
    assert _check(doctor(settings=config.settings()), "dead_letters").detail.startswith("1 dead letters")
    assert messaging.receive("bob", lease=0.1) == []  # marks it dead
    check = _check(doctor(settings=config.settings()), "dead_letters")
    assert check.ok and check.detail.startswith("1 dead letters") and "messaging.dead_letters" in check.detail
    messaging.ack("bob", [m["id"] for m in messaging.dead_letters("bob")])
    assert _check(doctor(settings=config.settings()), "dead_letters").detail == "no dead letters"
