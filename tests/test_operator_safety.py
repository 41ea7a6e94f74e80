"""Operator safety (CONTRACT "Operator safety"): one authority per phase, an upgrade that breaks nothing,
guards that judge the current phase's evidence to the second, and commands that create nothing by mistake.

Real processes and the real CLI throughout; every storage case on SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from datetime import datetime, timezone

import pytest

from federation import config, context, governance, rollout
from federation.domain.generate import generate
from federation.transfer.migrate import migrate
from federation.rollout import _counts, _flag

from test_rollout import REPO, Watcher, cli, refused, run_cli, status_json, unpinned_env, wait_for


def set_flag(fed, phase: int) -> None:
    """The live flag at *phase*, set as an operator would past the guards (a test's set-up)."""
    result = cli(fed, "rollout", "set", str(phase), "--force", "--reason", "test set-up")
    assert result.exit_code == 0, result.output


def migrated_tree(fed) -> None:
    generate(fed.root, agents=4, messages=12, polls=2, sessions=1)
    assert migrate(settings=config.settings()).exit_code == 0


def file_vote(fed, poll: str, voter: str) -> str:
    return json.loads((fed.root / "shared" / "polls.json").read_text())[poll]["votes"][voter]


# ---------------------------------------------------------------------------
# one authority per phase


def test_phase_4_sync_to_db_is_refused_and_reverts_nothing(fed):
    """Phase 4: a vote changed in the database only; `sync --to db` exits 1 naming the database and phase 4,
    the vote keeps its phase-4 value; `report` names only `sync --to files`; `--force` needs `--reason`, and
    with one the sync runs and is recorded in control/syncs.jsonl."""
    migrated_tree(fed)
    poll = governance.list_polls()[0]["id"]
    voter, before = next(iter(governance.get_poll(poll)["votes"].items()))
    set_flag(fed, 4)
    fed.phase(4)
    now = "option-1" if before != "option-1" else "option-0"
    governance.vote(poll, voter, now)  # the database only: the file keeps the phase-3 value
    assert file_vote(fed, poll, voter) == before

    result = run_cli(fed, "sync", "--to", "db")
    assert result.returncode == 1
    assert "database is authoritative in phase 4" in result.stderr and "sync --to files" in result.stderr
    assert governance.get_poll(poll)["votes"][voter] == now  # nothing reverted

    report = run_cli(fed, "report")
    assert report.returncode == 1
    assert "`federation sync --to files` repairs" in report.stdout and "--to db" not in report.stdout

    assert run_cli(fed, "sync", "--to", "db", "--force").returncode == 2  # no reason: usage error
    assert governance.get_poll(poll)["votes"][voter] == now
    forced = run_cli(fed, "sync", "--to", "db", "--force", "--reason", "restoring the files' state on purpose")
    assert forced.returncode == 0, forced.stderr
    assert governance.get_poll(poll)["votes"][voter] == before  # forced: the files' value, as asked
    record = json.loads((fed.root / "control" / "syncs.jsonl").read_text().splitlines()[-1])
    assert (record["to"], record["forced"], record["reason"]) == ("db", True, "restoring the files' state on purpose")

    assert run_cli(fed, "sync", "--to", "files").returncode == 0  # the safe direction is never refused


def test_phase_2_sync_to_files_is_refused_and_reverts_nothing(fed):
    """Phase 2 (files authoritative): a context changed in the database only; `sync --to files` exits 1
    naming the files and phase 2, the file keeps its value; `report` suggests only `sync --to db`."""
    migrated_tree(fed)
    set_flag(fed, 2)
    path = fed.root / "nodes" / "agent-000" / "context_window.json"
    before = path.read_bytes()
    fed.store().db.write(lambda tx: tx.execute("UPDATE context SET text = ? WHERE agent = ?",
                                               ("changed in the db", "agent-000")))
    result = run_cli(fed, "sync", "--to", "files")
    assert result.returncode == 1
    assert "files are authoritative in phase 2" in result.stderr and "sync --to db" in result.stderr
    assert path.read_bytes() == before
    report = run_cli(fed, "report")
    assert report.returncode == 1 and "`federation sync --to db` repairs" in report.stdout
    assert "--to files" not in report.stdout
    assert run_cli(fed, "sync", "--to", "db").returncode == 0
    assert run_cli(fed, "report").returncode == 0


def test_sync_called_from_python_with_the_fleets_phase_refuses_the_same_way(fed, tmp_path):
    """The CLI hands transfer.sync.sync the fleet's phase (the rollout's question, asked above the transfer
    layer); from Python, handed phase 2, `to="files"` raises AuthoritativeSideError naming the files and
    writes nothing; without a phase both sides are refused (ConfigError); `to="db"` repairs. archive-legacy handed the phase names the same safe repair."""
    from federation.errors import AuthoritativeSideError, ConfigError, ConflictError
    from federation.transfer.archive import archive_legacy
    from federation.transfer.sync import sync

    migrated_tree(fed)
    path = fed.root / "nodes" / "agent-000" / "context_window.json"
    before = path.read_bytes()
    fed.store().db.write(lambda tx: tx.execute("UPDATE context SET text = ? WHERE agent = ?",
                                               ("changed in the db", "agent-000")))
    with pytest.raises(AuthoritativeSideError, match="files are authoritative in phase 2.*sync --to db"):
        sync("files", phase=2, settings=config.settings())
    with pytest.raises(ConfigError, match="--force needs --reason"):
        sync("files", phase=2, force=True, settings=config.settings())
    for side in ("files", "db"):  # not told the phase: neither side may be written
        with pytest.raises(ConfigError, match=r"needs the fleet's phase.*rollout.fleet_phase\(\)"):
            sync(side, settings=config.settings())
    assert path.read_bytes() == before
    with pytest.raises(ConflictError, match="repair with `federation sync --to db`"):
        archive_legacy(tmp_path / "a.tar.gz", phase=2, settings=config.settings())
    with pytest.raises(ConflictError, match="repair with the `federation sync` it names"):
        archive_legacy(tmp_path / "a.tar.gz", settings=config.settings())
    assert not (tmp_path / "a.tar.gz").exists()
    assert [c.action for c in sync("db", phase=2, settings=config.settings()).changes] == ["upsert"]
    assert run_cli(fed, "report").returncode == 0


def test_sync_to_db_converges_on_messages_read_in_the_database(fed):
    """Messages whose files are still there but which the database marks read (claimed in phase 4, say):
    `sync --to db` in phase 2 makes them unread again, once; a second run changes nothing, report exits 0."""
    migrated_tree(fed)
    set_flag(fed, 2)
    fed.store().db.write(lambda tx: tx.execute("UPDATE messages SET read_at = ? WHERE recipient = ?",
                                               ("2026-01-01T00:00:00.000000+00:00", "agent-001")))
    listed = json.loads(run_cli(fed, "report", "--json").stdout)["entities"]["messages"]["missing_in_db"]
    assert listed
    first = json.loads(run_cli(fed, "sync", "--to", "db", "--json").stdout)
    assert len(first["changes"]) == len(listed)
    second = json.loads(run_cli(fed, "sync", "--to", "db", "--json").stdout)
    assert second["changes"] == []
    assert run_cli(fed, "report").returncode == 0


# ---------------------------------------------------------------------------
# an upgrade never breaks


def test_unpinned_agents_on_an_unmigrated_tree_serve_the_files(fed):
    """A legacy tree, no database backfilled, no flag, no pin: an agent process works from the files (phase 1,
    source default, shown so by `rollout status`); `rollout set 3` is refused by `backfilled`, and so it is
    with the flag already at 3; `migrate` then sets the flag to 1 so the fleet does not jump to 3 by itself."""
    generate(fed.root, agents=3, messages=6, polls=1, sessions=1)
    (fed.root / "nodes" / "probe").mkdir(parents=True)
    (fed.root / "nodes" / "probe" / "context_window.json").write_text(json.dumps(
        {"agent": "probe", "text": "from the files", "last_heartbeat": None, "updated_at": None}))
    agent = Watcher(fed, "w1", unpinned_env(fed))
    try:
        wait_for(lambda: len(agent.lines()) >= 10, 60, what="ten calls")
        lines = agent.lines()
        assert all(line["err"] is None for line in lines), [line["err"] for line in lines if line["err"]][:3]
        assert {(line["phase"], line["source"]) for line in lines} == {(1, "default")}
        assert lines[-1]["text"] == "from the files"
        wait_for(lambda: agent.proc.pid in {p["pid"] for p in status_json(fed)["fleet"]}, 30, what="its announcement")
        me = {p["pid"]: p for p in status_json(fed)["fleet"]}[agent.proc.pid]
        assert (me["phase"], me["source"]) == (1, "default")
        text = run_cli(fed, "rollout", "status").stdout
        assert "not set" in text and "phase 1" in text

        result = cli(fed, "rollout", "set", "3", "--min-comparisons", "0")
        assert "backfilled" in refused(result)
        assert _flag.read_flag(fed.root) is None
        set_flag(fed, 3)  # an operator forcing the phase does not make the guard go away
        assert "backfilled" in refused(cli(fed, "rollout", "set", "3"))
        assert "backfilled" in refused(cli(fed, "rollout", "set", "4", "--min-comparisons", "0"))
        set_flag(fed, 1)
    finally:
        agent.finish()


def test_migrate_without_a_flag_keeps_the_fleet_on_the_files(fed):
    """The first `migrate` of a legacy tree with no flag sets the flag to 1 (recorded), so processes that
    served the files by default stay there once the database is backfilled, until `rollout set 2`."""
    generate(fed.root, agents=3, messages=6, polls=1, sessions=1)
    result = run_cli(fed, "migrate")
    assert result.returncode == 0, result.stderr
    flag = _flag.read_flag(fed.root)
    assert flag is not None and flag.phase == 1 and "migrate" in flag.reason
    assert "rollout set 2" in result.stderr


def test_backfill_error_points_to_the_flag_first(fed):
    """A process pinned to phase 3 on an un-backfilled tree: the error names `rollout set 1` before the rest."""
    generate(fed.root, agents=2, messages=2, polls=1, sessions=1)
    from federation.errors import BackfillRequiredError

    with pytest.raises(BackfillRequiredError) as info:
        context.get_context("agent-000")
    text = str(info.value)
    assert text.index("rollout set 1") < text.index("federation migrate")


# ---------------------------------------------------------------------------
# a missing root


@pytest.mark.sqlite_only
@pytest.mark.parametrize("args", [["migrate"], ["report"], ["sync", "--to", "db"], ["doctor"],
                                  ["archive-legacy", "--to", "ARCHIVE"], ["rollout", "status"],
                                  ["rollout", "set", "2"]], ids=lambda a: "-".join(a[:2]))
def test_a_missing_root_is_a_usage_error_and_creates_nothing(fed, tmp_path, args):
    """Each command given a --root that does not exist exits 2 and creates no folder and no database."""
    missing = tmp_path / "typo" / "root"
    db = tmp_path / "typo-db" / "federation.db"
    args = [str(tmp_path / "a.tar.gz") if a == "ARCHIVE" else a for a in args]
    before = sorted(os.listdir(tmp_path))
    result = subprocess.run([sys.executable, "-m", "federation", *args, "--root", str(missing), "--db", str(db)],
                            env=unpinned_env(fed), capture_output=True, text=True, timeout=120, cwd=str(REPO))
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "does not exist" in result.stderr
    assert sorted(os.listdir(tmp_path)) == before and not missing.exists() and not db.exists()


# ---------------------------------------------------------------------------
# evidence: exact to the second, from the current phase's entry


def test_window_of_seconds_inside_a_bucket(tmp_path):
    """A cell's per-second counts make a window that cuts its bucket exact: only the seconds inside count;
    a cell written without them (an older process) counts only when its bucket starts inside."""
    hour = 1_800_000_000 // 3600 * 3600
    lat = {s: {"counts": [0] * 17, "sum_ms": 0.0} for s in ("files", "db")}
    cells = [((hour, "votes", 2), {"comparisons": 12, "mismatches": 1, "errors": 0, "latency": lat,
                                   "seconds": {"10": [5, 1, 0], "40": [7, 0, 0]}})]
    _counts.write_counts(_counts.counts_file(tmp_path, hour, 1, 0.0), 1, "x", 60, cells)
    at = lambda t: datetime.fromtimestamp(t, tz=timezone.utc)  # noqa: E731
    got = lambda lo, hi: [(c["comparisons"], c["mismatches"]) for c in _counts.read_cells(tmp_path, at(lo), at(hi))]  # noqa: E731
    assert got(hour + 28.5, hour + 3600) == [(7, 0)]
    assert got(hour + 10, hour + 3600) == [(12, 1)]
    assert got(hour, hour + 11) == [(5, 1)]
    assert got(hour + 41, hour + 3600) == []
    cells[0][1].pop("seconds")
    _counts.write_counts(_counts.counts_file(tmp_path, hour, 1, 0.0), 1, "x", 60, cells)
    assert got(hour + 28, hour + 3600) == [] and got(hour, hour + 3600) == [(12, 1)]


@pytest.mark.sqlite_only
def test_since_in_the_middle_of_a_bucket_counts_what_came_after(fed):
    """With hour-long buckets (any --since falls inside one), the comparisons made after --since are counted:
    `rollout status --since` and `rollout set 3 --since` see them, not 0 and not those before."""
    context.set_context("probe", "on both sides")
    set_flag(fed, 2)
    env = unpinned_env(fed, FEDERATION_COUNTS_BUCKET="3600")
    before = Watcher(fed, "early", env)
    wait_for(lambda: len(before.lines()) >= 20, 60, what="early comparisons")
    before.finish()
    time.sleep(1.1)
    whole = math.ceil(time.time())  # a whole second: --since as an operator types it (01:50:28Z)
    time.sleep(max(0.0, whole - time.time()))
    since = datetime.fromtimestamp(whole, tz=timezone.utc)
    later = Watcher(fed, "late", env)
    try:
        wait_for(lambda: rollout.totals(since=since, settings=config.settings())["comparisons"] >= 10, 60, what="comparisons after --since")
    finally:
        later.finish()
    after = rollout.totals(since=since, settings=config.settings())["comparisons"]
    lines = [line for line in later.lines() if line["phase"] == 2]
    assert after == len(lines)  # exactly the late watcher's compared reads, none of the early one's
    assert rollout.totals(settings=config.settings())["comparisons"] == after + len(before.lines())
    result = cli(fed, "rollout", "set", "3", "--since", since.isoformat(), "--min-comparisons", "5")
    assert result.exit_code == 0, result.output
    assert f"{after} comparison(s)" in result.output


@pytest.mark.sqlite_only
def test_a_mismatch_repaired_in_phase_2_does_not_block_3_to_4(fed):
    """Phase 2 counts a mismatch (a file edited behind the shim), `sync --to db` repairs it, phase 3 is
    entered with --since after the repair; then 3 -> 4 without --since judges phase 3 alone: accepted."""
    context.set_context("probe", "on both sides")
    set_flag(fed, 2)
    env = unpinned_env(fed)
    path = fed.root / "nodes" / "probe" / "context_window.json"
    doc = json.loads(path.read_text())
    doc["text"] = "edited by hand"
    path.write_text(json.dumps(doc))
    w = Watcher(fed, "two", env)
    try:
        wait_for(lambda: rollout.totals(settings=config.settings())["mismatches"] >= 1, 60, what="a counted mismatch")
    finally:
        w.finish()
    assert run_cli(fed, "sync", "--to", "db").returncode == 0
    repaired = datetime.now(timezone.utc)
    time.sleep(1.1)
    w = Watcher(fed, "two-b", env)
    try:
        wait_for(lambda: rollout.totals(since=repaired, settings=config.settings())["comparisons"] >= 5, 60, what="comparisons after repair")
    finally:
        w.finish()
    result = cli(fed, "rollout", "set", "3", "--since", repaired.isoformat(), "--min-comparisons", "5")
    assert result.exit_code == 0, result.output
    entered = _flag.read_flag(fed.root).set_at
    w = Watcher(fed, "three", env)
    try:
        wait_for(lambda: rollout.totals(since=datetime.fromisoformat(entered), settings=config.settings())["comparisons"] >= 5, 60,
                 what="comparisons in phase 3")
    finally:
        w.finish()
    assert rollout.totals(settings=config.settings())["mismatches"] >= 1  # still in the last 24 hours
    result = cli(fed, "rollout", "set", "4", "--min-comparisons", "5")
    assert result.exit_code == 0, result.output
    assert "(when phase 3 was entered)" in result.output


def test_the_step_to_3_counts_phase_2_from_the_end_of_the_catch_up_migrate(fed):
    """Issue 29, the runbook as written: a record written in phase 1 after the first migrate is read in phase 2
    before the catch-up migrate (mismatches, rightly: the database lacks it); the catch-up migrate records its
    end, and `rollout set 3` without --since counts from there: accepted on the first try."""
    fed.phase(1)
    context.set_context("seed", "before the first migrate")
    assert migrate(settings=config.settings()).exit_code == 0
    context.set_context("probe", "written in phase 1 after the first migrate")
    result = cli(fed, "rollout", "set", "2")
    assert result.exit_code == 0, result.output
    env = unpinned_env(fed)
    w = Watcher(fed, "two", env)
    try:
        wait_for(lambda: rollout.totals(settings=config.settings())["mismatches"] >= 1, 60, what="a counted mismatch before the catch-up")
        assert migrate(settings=config.settings()).exit_code == 0  # the runbook's catch-up
        caught_up = datetime.now(timezone.utc)
        wait_for(lambda: rollout.totals(since=caught_up, settings=config.settings())["comparisons"] >= 5, 60, what="comparisons after it")
    finally:
        w.finish()
    assert rollout.totals(settings=config.settings())["mismatches"] >= 1  # the early mismatches are still counted, just not judged
    result = cli(fed, "rollout", "set", "3", "--min-comparisons", "5")
    assert result.exit_code == 0, result.output
    assert "(when the catch-up `migrate` or `sync --to db` ended)" in result.output


# ---------------------------------------------------------------------------
# the fleet, the mismatches, the terminal


@pytest.mark.sqlite_only
def test_a_killed_process_is_gone_at_once_and_status_answers_every_live_one(fed):
    """A SIGKILLed process of this host is gone at the next read (not after the fleet timeout), and so is an
    announcement whose pid now belongs to another process; `rollout status --expect-phase N` answers."""
    context.set_context("probe", "x")
    set_flag(fed, 3)
    env = unpinned_env(fed, FEDERATION_FLEET_TIMEOUT="300")
    w = Watcher(fed, "victim", env)
    wait_for(lambda: w.proc.pid in {p["pid"] for p in rollout.fleet(settings=config.settings()) if p["alive"]}, 60, what="announced")
    w.proc.kill()
    w.proc.wait(timeout=30)
    gone = {p["pid"]: p for p in rollout.fleet(settings=config.settings())}[w.proc.pid]
    assert gone["alive"] is False
    # an announcement whose pid is reused: this test process's pid, announced with another start time
    fleet_dir = fed.root / "control" / "fleet"
    doc = json.loads(next(fleet_dir.glob("*.json")).read_text())
    doc.update(pid=os.getpid(), proc_start=1, last_seen=datetime.now(timezone.utc).isoformat())
    (fleet_dir / f"{doc['host']}-{os.getpid()}.json").write_text(json.dumps(doc))
    assert {p["pid"]: p["alive"] for p in rollout.fleet(settings=config.settings())}[os.getpid()] is False
    other = subprocess.Popen([sys.executable, "-c", "from federation import context; import time; "
                              "context.get_context('probe'); time.sleep(60)"], env=env)
    try:
        wait_for(lambda: other.pid in {p["pid"] for p in rollout.fleet(settings=config.settings()) if p["alive"]}, 60, what="a live one")
        assert run_cli(fed, "rollout", "status", "--expect-phase", "3").returncode == 0
        result = run_cli(fed, "rollout", "status", "--expect-phase", "2")
        assert result.returncode == 1 and f":{other.pid} in 3" in result.stderr
        summary = json.loads(run_cli(fed, "rollout", "status", "--json").stdout)["fleet_summary"]
        assert summary["all_in"] == 3 and summary["phases"] == {"3": summary["live"]}
    finally:
        other.kill()
        other.wait(timeout=30)


@pytest.mark.sqlite_only
def test_mismatches_are_listed_from_the_cli_and_the_refusal_points_there(fed):
    """A counted mismatch is listed by `rollout mismatches` with its diff; the rate guard's fix names it."""
    context.set_context("probe", "on both sides")
    set_flag(fed, 2)
    path = fed.root / "nodes" / "probe" / "context_window.json"
    doc = json.loads(path.read_text())
    doc["text"] = "edited by hand"
    path.write_text(json.dumps(doc))
    assert subprocess.run([sys.executable, "-c", "from federation import context; context.get_context('probe')"],
                          env=unpinned_env(fed), timeout=60).returncode == 0
    listed = json.loads(run_cli(fed, "rollout", "mismatches", "--json").stdout)
    assert [(m["entity"], m["key"]) for m in listed] == [("context", "probe")]
    text = run_cli(fed, "rollout", "mismatches").stdout
    assert "context probe" in text and "edited by hand" in text and "federation sync --to db" in text
    result = cli(fed, "rollout", "set", "3", "--min-comparisons", "0", "--since", "1h")
    assert "consistency_rate" in refused(result) and "federation rollout mismatches" in result.output


@pytest.mark.sqlite_only
def test_demo_ends_with_three_commands_and_info_events_stay_off_a_terminal_s_output(fed, tmp_path):
    """`demo` ends with three commands to try; on a terminal (a pty) info events are not printed, with -v
    they are; off a terminal they are JSON lines as before."""
    import pty

    out = run_cli(fed, "demo").stdout.splitlines()
    assert out[-4] == "next, try:" and all(line.startswith("  federation ") for line in out[-3:])

    def on_tty(*args: str) -> str:
        leader, follower = pty.openpty()
        proc = subprocess.Popen([sys.executable, "-m", "federation", *args], env=unpinned_env(fed),
                                stdin=follower, stdout=follower, stderr=follower, cwd=str(REPO))
        os.close(follower)
        chunks = []
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        proc.wait(timeout=60)
        os.close(leader)
        return b"".join(chunks).decode(errors="replace")

    quiet = on_tty("doctor")
    assert "healthy" in quiet and "doctor_ran" not in quiet
    assert "doctor_ran" in on_tty("doctor", "-v")
    piped = run_cli(fed, "doctor")
    assert any(json.loads(line).get("event") == "doctor_ran" for line in piped.stderr.splitlines()
               if line.startswith("{"))


@pytest.mark.sqlite_only
def test_report_cannot_open_the_database_has_its_own_exit_code(fed, tmp_path):
    """A database file that is not a database: `report` exits 3 (not 1, which means "they differ")."""
    context.set_context("probe", "x")
    bad = tmp_path / "not-a-db.db"
    bad.write_bytes(b"this is not a SQLite file at all" * 100)
    result = subprocess.run([sys.executable, "-m", "federation", "report", "--db", str(bad)],
                            env=unpinned_env(fed), capture_output=True, text=True, timeout=60, cwd=str(REPO))
    assert result.returncode == 3, (result.stdout, result.stderr)
    assert "cannot compare" in result.stderr


# ---------------------------------------------------------------------------
# report and doctor under live traffic

#: one agent's loop until the stop file: vote, send to bob, set its context; ~50 writes/s with --pause 0.02
TRAFFIC = r"""
import os, sys, time
from federation import context, governance, messaging
poll, name, stop, claim = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "claim"
i = 0
while not os.path.exists(stop):
    if claim:
        messaging.check_inbox("bob")
    else:
        governance.vote(poll, f"{name}-{i % 40}", "yes" if i % 2 else "no")
        messaging.send_message(name, "bob", f"{name} says {i}")
        context.set_context(name, f"tick {i}")
    i += 1
    time.sleep(0.02)
print(i)
"""


def _traffic(fed, phase: int) -> tuple[list[subprocess.Popen], object]:
    poll = governance.create_poll("lead", "Busy?", ["yes", "no"])
    set_flag(fed, phase)
    stop = fed.root.parent / "traffic.stop"
    env = unpinned_env(fed)
    procs = [subprocess.Popen([sys.executable, "-c", TRAFFIC, poll, name, str(stop), role], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name, role in (("w1", "write"), ("w2", "write"), ("c1", "claim"))]
    return procs, stop


def _stop(procs, stop) -> int:
    stop.touch()
    calls = 0
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err[-3000:]
        calls += int(out.strip().splitlines()[-1])
    return calls


@pytest.mark.parametrize("phase", [2, 3])
def test_report_six_times_under_live_writes_exits_0(fed, phase):
    """Two writers (a vote, a message and a context each turn) and a claimer, about 100 writes/s together:
    `report` run six times meanwhile exits 0 each time (a write in flight is re-checked under its lock)."""
    context.set_context("lead", "on both sides")
    procs, stop = _traffic(fed, phase)
    codes = []
    try:
        wait_for(lambda: len(rollout.fleet(settings=config.settings())) >= 4, 60, what="the writers announced")
        for _ in range(6):
            result = run_cli(fed, "report")
            codes.append((result.returncode, result.stdout[-1500:]))
    finally:
        writes = _stop(procs, stop)
    assert writes > 50, "no traffic while the reports ran"
    assert [c for c, _ in codes] == [0] * 6, codes
    assert run_cli(fed, "report").returncode == 0  # and quiet afterwards too


@pytest.mark.parametrize("phase", [2, 3])
def test_doctor_under_live_claims_is_healthy(fed, phase):
    """Messages sent and claimed (their files removed) while `doctor` reads the tree: eight runs, each
    with `legacy_files` and `files_vs_database` ok (a file gone between listing and reading is not broken)."""
    context.set_context("lead", "on both sides")
    procs, stop = _traffic(fed, phase)
    failed = []
    try:
        wait_for(lambda: len(rollout.fleet(settings=config.settings())) >= 4, 60, what="the writers announced")
        for _ in range(8):
            checks = {c["name"]: c for c in json.loads(run_cli(fed, "doctor", "--json").stdout)["checks"]}
            failed += [c for name, c in checks.items() if name in ("legacy_files", "files_vs_database")
                       and not c["ok"]]
    finally:
        _stop(procs, stop)
    assert failed == []


# ---------------------------------------------------------------------------
# timers from the process's start

YOUNG_MACHINE = r"""
import sys, time
_real = time.monotonic
_base = _real() - 5.0
time.monotonic = lambda: _real() - _base  # as on a machine booted five seconds ago
from federation import context
context.get_context("probe")  # a compared read (phase 2): something to flush
time.sleep(float(sys.argv[1]))
"""


@pytest.mark.sqlite_only
def test_first_flush_and_announcement_come_at_once_on_a_young_machine(fed):
    """With hour-long flush and refresh intervals and a monotonic clock five seconds from boot, a process's
    first announcement and first flush of its counts still come at once (not an interval after boot)."""
    context.set_context("probe", "on both sides")
    set_flag(fed, 2)
    env = unpinned_env(fed, FEDERATION_COUNTS_FLUSH="3600", FEDERATION_FLEET_REFRESH="3600")
    proc = subprocess.Popen([sys.executable, "-c", YOUNG_MACHINE, "60"], env=env, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: proc.pid in {p["pid"] for p in rollout.fleet(settings=config.settings())}, 20, what="the first announcement")
        wait_for(lambda: rollout.totals(settings=config.settings())["comparisons"] >= 1, 20, what="the first flush of the counts")
        assert proc.poll() is None  # still running: the exit's flush did not write them
    finally:
        proc.kill()
        proc.wait(timeout=30)
