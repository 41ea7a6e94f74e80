"""Unknown is never empty (CONTRACT "Unknown is never empty", issue 24).

A legacy document that cannot be read -- torn, invalid, too deep, a link or a FIFO where the layout keeps
it -- is *unknown*: `report` never calls it consistent (exit 3), `sync` never deletes or overwrites its
records on either side, `doctor` and the guards refuse, and every command they name is safe in the phase
in which they name it.  Real CLI processes, a real legacy writer process, both engines.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from _procs import wait_for
from hypothesis import HealthCheck, given, settings, strategies as st

from federation import config, governance
from federation.domain.entities import BY_NAME
from federation.domain.generate import generate
from federation.operations.doctor import doctor
from federation.stores.sqlstore import forget_stores
from federation.transfer.migrate import migrate
from federation.transfer.report import build_report
from federation.transfer.sync import sync

from _transfer_helpers import db_rows
from test_rollout import cli, run_cli

TORN = b'{"truncated": '


def set_flag(fed, phase: int) -> None:
    result = cli(fed, "rollout", "set", str(phase), "--force", "--reason", "test set-up")
    assert result.exit_code == 0, result.output


def migrated(fed, phase: int, **sizes) -> None:
    generate(fed.root, **{"agents": 3, "messages": 6, "polls": 2, "sessions": 1, **sizes})
    assert migrate(settings=config.settings()).exit_code == 0
    set_flag(fed, phase)
    fed.phase(phase)


def polls_in_db(fed) -> dict[str, dict]:
    forget_stores()
    return {p: fed.store().load_poll(p) for p in fed.store().load_polls()}


def report_json(fed) -> tuple[int, dict]:
    result = run_cli(fed, "report", "--json")
    return result.returncode, json.loads(result.stdout)


def named(command: str) -> list[str]:
    """The arguments of a `federation ...` command a tool named (run as `python -m federation`)."""
    words = shlex.split(command)
    assert words[0] == "federation", command
    return words[1:]


# ---------------------------------------------------------------------------
# the road that lost a poll: a torn polls.json, then the command the tool names


@pytest.mark.parametrize("phase", [2, 3])
def test_torn_polls_then_the_named_commands_keep_the_poll_and_its_votes(fed, phase):
    """Phase 2 (files authoritative) and 3: `report` exits 3 listing polls.json as unknown; the difference
    repair (`sync --to db` / `--to files`) changes no poll or vote and exits 3; the named restore rebuilds
    polls.json from the database; afterwards `report` exits 0 and every poll and vote is where it was."""
    migrated(fed, phase)
    for n, poll in enumerate(governance.list_polls()):
        governance.vote(poll["id"], f"agent-00{n}", poll["options"][0])
        governance.vote(poll["id"], "agent-002", poll["options"][-1])
    before = polls_in_db(fed)
    assert len(before) == 2 and all(len(p["votes"]) == 2 for p in before.values())
    polls = fed.root / "shared" / "polls.json"
    polls.write_bytes(TORN)  # what a non-atomic writer or a full disk leaves

    code, data = report_json(fed)
    assert code == 3, data
    assert data["consistent"] is False
    assert [u["path"] for u in data["unknown"]] == [str(polls)]
    assert data["entities"]["polls"]["missing_in_files"] == [] and data["entities"]["votes"]["missing_in_files"] == []
    text = run_cli(fed, "report")
    assert text.returncode == 3 and "move it out" not in text.stdout, text.stdout

    plain = run_cli(fed, "sync", "--to", "db" if phase == 2 else "files")  # the repair of differences
    assert plain.returncode == 3, plain.stdout + plain.stderr
    assert "not synced: unknown" in plain.stdout and str(polls) in plain.stdout
    assert polls_in_db(fed) == before
    assert polls.read_bytes() == TORN  # never acted on

    restore = data["repair"]["unknown"]
    assert ("--force" in restore) == (phase == 2) and "--only polls" in restore, restore
    result = run_cli(fed, *named(restore))
    assert result.returncode == 0, result.stdout + result.stderr
    assert polls_in_db(fed) == before
    assert json.loads(polls.read_text()) == before
    assert report_json(fed)[0] == 0
    if phase == 2:  # over the authoritative side: recorded with its reason
        syncs = [json.loads(line) for line in (fed.root / "control" / "syncs.jsonl").read_text().splitlines()]
        assert syncs[-1]["forced"] is True and "restore unreadable" in syncs[-1]["reason"]


def test_doctor_and_guard_refuse_on_unknown_and_name_no_removal(fed):
    """Phase 2, a FIFO where a context file should be: doctor's legacy_files and files_vs_database fail, and
    neither fix says to move anything out of the root; the 2 -> 3 step is refused by report_consistent."""
    migrated(fed, 2)
    ctx = fed.root / "nodes" / "agent-001" / "context_window.json"
    ctx.unlink()
    os.mkfifo(ctx)
    checks = {c.name: c for c in doctor(settings=config.settings()).checks}
    for name in ("legacy_files", "files_vs_database"):
        assert not checks[name].ok, checks[name]
        assert "move it out" not in checks[name].fix and "--only context" in checks[name].fix, checks[name].fix
    result = cli(fed, "rollout", "set", "3", "--min-comparisons", "0")
    assert result.exit_code == 1, result.output
    assert "[FAILED] report_consistent" in result.output and "could not read" in result.output


def test_phase_1_names_no_database_rebuild(fed):
    """Phase 1 does not write the database: an unknown document's advice is a copy or a hand repair."""
    migrated(fed, 1)
    (fed.root / "shared" / "polls.json").write_bytes(b"{" * 5000)  # nested too deep
    code, data = report_json(fed)
    assert code == 3 and data["repair"]["unknown"] is None
    check = {c.name: c for c in doctor(settings=config.settings()).checks}["files_vs_database"]
    assert not check.ok and "copy of the legacy tree" in check.fix and "sync" not in check.fix.split(";")[0]


# ---------------------------------------------------------------------------
# torn is waited out: a legacy writer rewriting polls.json in place while report and sync run

LEGACY_WRITER = r"""
import os, sys, time
path, stop = sys.argv[1], sys.argv[2]
data = open(path, "rb").read()
half = len(data) // 2
while not os.path.exists(stop):
    with open(path, "wb") as fh:      # in place, like the legacy code: truncate, write, write
        fh.write(data[:half]); fh.flush()
        time.sleep(0.003)
        fh.write(data[half:])
    time.sleep(0.01)
"""


def test_report_and_sync_beside_a_non_atomic_legacy_writer(fed, tmp_path):
    """8 reports and 8 `sync --to db` while another process rewrites polls.json in place (same content): a
    report is consistent (0) or unknown (3), never consistent with polls missing; no sync loses a poll or vote."""
    migrated(fed, 2)
    before = polls_in_db(fed)
    stop = tmp_path / "stop"
    writer = subprocess.Popen([sys.executable, "-c", LEGACY_WRITER, str(fed.root / "shared" / "polls.json"),
                               str(stop)])
    codes = []
    try:
        for _ in range(8):
            report = build_report(recheck=True, settings=config.settings())
            codes.append(3 if report.unknown else (0 if report.consistent else 1))
            if report.consistent:
                assert report.entities["polls"].files == len(before)
            result = sync("db", phase=2, settings=config.settings())
            assert {u["path"] for u in result.unknown} <= {str(fed.root / "shared" / "polls.json")}
            assert polls_in_db(fed) == before
    finally:
        stop.touch()
        writer.wait(timeout=30)
    assert set(codes) <= {0, 3}, codes
    assert writer.returncode == 0


# ---------------------------------------------------------------------------
# the property: whatever is unknown, no sync the phase allows changes its records on either side

KINDS = ("truncated", "invalid", "deep", "fifo", "link")


def _spoil(path: Path, how: str, outside: Path) -> None:
    if how == "truncated":
        path.write_bytes(path.read_bytes()[: max(1, path.stat().st_size // 2)])
    elif how == "invalid":
        path.write_bytes(b"{not json")
    elif how == "deep":
        path.write_bytes(b"[" * 3000)
    elif how == "fifo":
        path.unlink()
        os.mkfifo(path)
    else:  # a link to a valid copy outside the root: never followed
        target = outside / f"{len(list(outside.iterdir()))}.json"
        shutil.copyfile(path, target)
        path.unlink()
        path.symlink_to(target)


def _entry(path: Path) -> tuple:
    st_ = os.lstat(path)
    return (st_.st_mode, os.readlink(path) if path.is_symlink() else
            (path.read_bytes() if path.is_file() else None))


def _documents(root: Path) -> list[Path]:
    docs = [root / "shared" / "polls.json", *sorted((root / "shared" / "sessions").glob("*.json"))]
    for node in sorted((root / "nodes").iterdir()):
        docs += sorted(p for p in node.iterdir() if p.suffix == ".json")
        docs += sorted((node / "inbox").glob("*.json"))
    return [p for p in docs if p.is_file()]


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), phase=st.sampled_from([2, 3]), picks=st.data())
def test_no_sync_the_phase_allows_touches_an_unknown_document(fed, seed, phase, picks):
    tmp = Path(tempfile.mkdtemp(prefix="fed-unknown-"))
    try:
        root, outside = tmp / "root", tmp / "outside"
        root.mkdir()
        outside.mkdir()
        env = {**fed.env, **fed.database_env(root / "federation.db"), "FEDERATION_ROOT": str(root),
               **config.phase_env(phase)}
        config.set_overrides(env, replace=True)
        forget_stores()
        generate(root, agents=3, messages=5, polls=2, sessions=2, seed=seed)
        assert migrate(settings=config.settings()).exit_code == 0
        docs = _documents(root)
        chosen = picks.draw(st.lists(st.sampled_from(docs), min_size=1, max_size=4, unique=True))
        for path in chosen:
            _spoil(path, picks.draw(st.sampled_from(KINDS)), outside)
        spoiled = {p: _entry(p) for p in chosen}
        outside_before = {p.name: p.read_bytes() for p in outside.iterdir()}
        report = build_report(recheck=True, settings=config.settings())
        unknown = {u["path"] for u in report.unknown.entries()}
        assert {str(p) for p in chosen} <= unknown and not report.consistent
        db_before = db_rows(fed.store())

        result = sync("db" if phase == 2 else "files", phase=phase, settings=config.settings())  # the direction the phase allows unforced

        assert {u["path"] for u in result.unknown} >= {str(p) for p in chosen}
        assert {p: _entry(p) for p in chosen} == spoiled  # not rewritten, not removed, not followed
        assert {p.name: p.read_bytes() for p in outside.iterdir()} == outside_before
        db_after = db_rows(fed.store())
        for table, rows in db_before.items():  # the records of every unknown document: as they were
            entity = BY_NAME[table]
            assert ({r for r in rows if report.unknown.covers(entity, r)}
                    == {r for r in db_after[table] if report.unknown.covers(entity, r)}), table
        again = build_report(recheck=True, settings=config.settings())
        assert again.unknown and not again.consistent  # report exits 3
    finally:
        fed.apply()
        forget_stores()
        shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------------------
# a message's file side is wherever the message is: inbox/, leased/, dead/ (issue 30)

TRAFFIC = r"""
import os, sys, time
from federation import messaging
stop, role = sys.argv[1], sys.argv[2]
n = 0
while not os.path.exists(stop):
    if role == "send":
        messaging.send_message("agent-000", "agent-001", f"m{n}")
        n += 1
        time.sleep(0.002)
    else:
        got = messaging.receive("agent-001", lease=30, limit=3)
        time.sleep(0.005)
        if got:  # one of each batch left leased (not acked): it stays in leased/
            messaging.ack("agent-001", [m["id"] for m in got[1:]])
"""


@pytest.mark.parametrize("phase", [2, 3])
def test_report_during_lease_and_ack_traffic_is_consistent_every_time(fed, phase, tmp_path):
    """A sender and a receiver that leases and acks run while `report` runs 6 times: each exits 0."""
    migrated(fed, phase)
    stop = tmp_path / "stop"
    procs = [fed.spawn(TRAFFIC, str(stop), role, phase=phase) for role in ("send", "receive")]
    codes = []
    leased_dir = fed.root / "nodes" / "agent-001" / "leased"
    try:
        # the traffic is under way (a loaded machine starts processes slowly): messages in leased/
        wait_for(lambda: list(leased_dir.glob("*.json")) if leased_dir.is_dir() else [], 60,
                 what="the receiver's first leases")
        for _ in range(6):
            report = build_report(recheck=True, settings=config.settings())
            codes.append(report.to_json() if not report.consistent else 0)
    finally:
        stop.touch()
        for p in procs:
            _, err = p.communicate(timeout=60)
            assert p.returncode == 0, err[-2000:]
    leased = list(leased_dir.glob("*.json"))
    assert leased, "the traffic left no message leased: the test did not test leased/"
    assert codes == [0] * 6, [c for c in codes if c][:1]
