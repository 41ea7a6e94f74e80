"""Configuration handed to the commands explicitly (issue 17): two federations in one process.

Each operator command takes ``settings=``; here two federations (two roots, two
databases) are served by the same process with no override and no reset between
them, and each command must see only the federation it was handed.  The CLI builds
its settings per invocation and leaves no override behind.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from federation import config, messaging, rollout
from federation.cli import main
from federation.domain.generate import generate
from federation.errors import FederationError
from federation.operations.backup import backup
from federation.operations.doctor import doctor
from federation.operations.prune import prune
from federation.rollout import guards, set_phase, status
from federation.stores.sqlstore import forget_stores, get_store
from federation.transfer.archive import archive_legacy
from federation.transfer.migrate import migrate
from federation.transfer.report import build_report
from federation.transfer.sync import sync

OLD = "2020-01-01T00:00:00.000000+00:00"

#: two federations of different sizes: every count tells which one a command read
SIZES = {"a": dict(agents=3, messages=12, polls=2, sessions=1, seed=1),
         "b": dict(agents=5, messages=40, polls=4, sessions=3, seed=2)}


@pytest.fixture(params=("sqlite", "postgresql"))
def two(request: pytest.FixtureRequest, tmp_path: Path):
    """{name: (Settings, rows written)} of two federations on one engine, each with a legacy tree.

    The settings are built from explicit values (``config.settings_with``): nothing is overridden.
    """
    new_pg_database = request.getfixturevalue("pg_databases") if request.param == "postgresql" else None
    out = {}
    for name, size in SIZES.items():
        root = tmp_path / f"fed-{name}"
        root.mkdir()
        written = generate(root, **size)
        s = config.settings_with({
            "FEDERATION_ROOT": str(root), "FEDERATION_DB": str(tmp_path / f"{name}.db"),
            "FEDERATION_DB_URL": new_pg_database() if new_pg_database else None,
            "FEDERATION_USE_DB": "1", "FEDERATION_PHASE": "3", "FEDERATION_SHADOW_SAMPLE": "1.0"})
        out[name] = (s, written["rows"])
    yield out
    forget_stores()  # close this test's connections (the PostgreSQL databases are dropped next)


def _guard(checks: list[dict], name: str) -> dict:
    found = [g for g in checks if g["name"] == name]
    assert len(found) == 1, checks
    return found[0]


def test_each_command_sees_only_the_federation_it_was_handed(two, tmp_path):
    """migrate, the guards, report, sync, doctor, backup, prune, archive and rollout set/status run on two
    federations in one process, with no override and no reset: each sees only its own root and database."""
    overrides_before = dict(config._overrides)
    ambient = config.settings()
    (sa, rows_a), (sb, rows_b) = two["a"], two["b"]
    assert rows_a["messages"] != rows_b["messages"] and rows_a["polls"] != rows_b["polls"]
    assert ambient.root not in (sa.root, sb.root)
    ambient_root_existed = ambient.root.exists()

    # the backfilled guard, before any migration: refused, naming each one's own database
    for s, other in ((sa, sb), (sb, sa)):
        g = _guard(guards(3, settings=s), "backfilled")
        assert not g["ok"] and "does not exist yet" in g["detail"], g
        assert s.db_display in g["detail"] and other.db_display not in g["detail"]

    # migrate: each database receives its own tree
    files = {}
    for s, rows in ((sa, rows_a), (sb, rows_b)):
        result = migrate(settings=s)
        assert result.exit_code == 0, result.to_json()
        assert {t: c["rows"] for t, c in result.entities.items()} == rows
        assert get_store(s).counts()["messages"] == rows["messages"]
        files[s.root] = result.files
        g = _guard(guards(3, settings=s), "backfilled")
        assert g["ok"] and "backfilled at" in g["detail"], g

    # report: each compares its own tree with its own database
    for s, rows in ((sa, rows_a), (sb, rows_b)):
        report = build_report(settings=s, recheck=True)
        assert report.consistent, report.to_json()
        assert report.entities["messages"].files == report.entities["messages"].rows == rows["messages"]
        assert report.entities["polls"].rows == rows["polls"]

    # sync in the safe direction of phase 3 (the files): only b lost a file, only b's is written back
    lost = sorted((sb.root / "nodes").glob("*/inbox/*.json"))[0]
    lost.unlink()
    assert not build_report(settings=sb).consistent and build_report(settings=sa).consistent
    assert sync("files", settings=sa, phase=rollout.fleet_phase(sa)).changes == []
    changed = sync("files", settings=sb, phase=rollout.fleet_phase(sb)).changes
    assert len(changed) == 1 and lost.exists(), [str(c) for c in changed]
    assert build_report(settings=sb).consistent

    # doctor: each reads its own tree and database
    for s, other in ((sa, sb), (sb, sa)):
        checks = {c.name: c for c in doctor(s).checks}
        assert f"{files[s.root]} legacy files under {s.root}," in checks["legacy_files"].detail
        assert checks["files_vs_database"].ok, checks["files_vs_database"]
        assert files[s.root] != files[other.root]

    # backup: SQLite copies each one's own file; PostgreSQL names each one's own database in the pg_dump command
    for s, rows in ((sa, rows_a), (sb, rows_b)):
        dest = tmp_path / f"backup-{s.root.name}.db"
        if s.db_url:
            with pytest.raises(FederationError) as info:
                backup(dest, settings=s)
            assert s.db_url.rsplit("/", 1)[1] in str(info.value)
            continue
        result = backup(dest, settings=s)
        assert result.source == str(s.db_path)
        with sqlite3.connect(dest) as copy:
            assert copy.execute("SELECT COUNT(*) FROM messages").fetchone()[0] == rows["messages"]

    # archive: each archives and removes its own tree (the reports agree)
    for s, still in ((sa, sb), (sb, None)):
        result = archive_legacy(tmp_path / f"legacy-{s.root.name}.tar.gz", settings=s)
        assert result.files == files[s.root] and result.kept == []
        assert not (s.root / "nodes").exists()
        if still is not None:
            assert (still.root / "nodes").is_dir()  # b's tree stays while a's is archived

    # prune: each removes its own old read messages
    for s, n in ((sa, 2), (sb, 5)):
        get_store(s).db.write(lambda tx, n=n: tx.execute(
            "UPDATE messages SET read_at = ? WHERE id IN (SELECT id FROM messages ORDER BY id LIMIT ?)", (OLD, n)))
    for s, rows, n in ((sa, rows_a, 2), (sb, rows_b, 5)):
        assert prune("30d", settings=s, pause=0).removed["messages"] == n
        assert get_store(s).counts()["messages"] == rows["messages"] - n

    # rollout: a step of a's flag is a's alone
    result = set_phase(2, reason="test: step a back", settings=sa)
    assert result.applied and result.changed, result.to_json()
    assert status(settings=sa)["flag"]["phase"] == 2
    assert status(settings=sb)["flag"] is None
    assert [h["to"] for h in status(settings=sa)["history"]] == [2] and status(settings=sb)["history"] == []

    assert config._overrides == overrides_before  # nothing was overridden on the way
    assert config.settings() == ambient
    assert ambient.root.exists() == ambient_root_existed  # the configured federation was never touched


def test_cli_hands_each_invocation_its_settings_and_leaves_no_override(two, tmp_path):
    """Two CLI invocations in one process on two federations: each reports its own counts, and the
    process's configuration afterwards is what it was (no --root/--db left behind)."""
    before = dict(config._overrides)
    ambient = config.settings()
    runner = CliRunner()
    for name in ("a", "b"):
        s, rows = two[name]
        db = s.db_url or str(s.db_path)
        result = runner.invoke(main, ["migrate", "--json", "--root", str(s.root), "--db", db])
        assert result.exit_code == 0, result.output
        result = runner.invoke(main, ["report", "--json", "--root", str(s.root), "--db", db])
        assert result.exit_code == 0, result.output
        data = json.loads(result.output)
        assert data["entities"]["messages"]["rows"] == rows["messages"]
        assert config._overrides == before, "the CLI left overrides behind"
        assert config.settings() == ambient
    assert two["a"][1]["messages"] != two["b"][1]["messages"]


def test_in_memory_history_is_kept_per_federation_root(fed, tmp_path):
    """Phase 1's message history lives in the process, one per root: another root's history is not
    shown, and going back to the first root finds it again (no reset between federations)."""
    fed.phase(1)
    messaging.send_message("alice", "bob", "hello")
    assert [e["message_id"] for e in messaging.get_history("bob")]
    mine = messaging.get_history("bob")
    other = tmp_path / "other"
    other.mkdir()
    with config.override(FEDERATION_ROOT=str(other)):
        assert messaging.get_history("bob") == [] and messaging.get_history("alice") == []
        messaging.send_message("carol", "dave", "elsewhere")
        assert len(messaging.get_history("dave")) == 1
    assert messaging.get_history("bob") == mine and messaging.get_history("dave") == []
