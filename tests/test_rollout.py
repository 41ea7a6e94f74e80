"""The rollout control plane: the live flag, the fleet, guarded steps (real processes, real CLI)."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest
from _procs import remove_tree, wait_for
from click.testing import CliRunner
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from structlog.testing import capture_logs

from federation import config, context, governance, rollout
from federation.cli import main
from federation.rollout import _flag
from federation.rollout._runtime import Runtime

REPO = Path(__file__).resolve().parent.parent

#: short intervals, so the tests see in a second what production sees in 5-30 s
FAST = {"FEDERATION_FLEET_REFRESH": "0.25", "FEDERATION_FLEET_TIMEOUT": "3", "FEDERATION_COUNTS_FLUSH": "0.25",
        "FEDERATION_COUNTS_BUCKET": "1"}


def unpinned_env(fed, **extra: object) -> dict[str, str]:
    """The environment of a process that follows the live flag (no phase or sample pin)."""
    env = fed.subprocess_env()
    for var in ("FEDERATION_USE_DB", "FEDERATION_PHASE", "FEDERATION_SHADOW_SAMPLE"):
        env.pop(var, None)
    env.update(FAST)
    env.update({k: str(v) for k, v in extra.items()})
    return env


def db_arg(fed) -> str:
    return fed.db_url or str(fed.db_path)


def run_cli(fed, *args: str, **extra: object) -> subprocess.CompletedProcess:
    """``python -m federation ARGS`` as a real process of this federation (unpinned)."""
    return subprocess.run([sys.executable, "-m", "federation", *args], env=unpinned_env(fed, **extra),
                          capture_output=True, text=True, timeout=120, cwd=str(REPO))


def cli(fed, *args: str):
    """The CLI in this process (faster), with --root and --db."""
    return CliRunner().invoke(main, [*args, "--root", str(fed.root), "--db", db_arg(fed)])


def status_json(fed) -> dict:
    result = cli(fed, "rollout", "status", "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def edit_file_context(fed, agent: str, text: str) -> None:
    """Change an agent's context file behind the shim's back."""
    path = fed.root / "nodes" / agent / "context_window.json"
    doc = json.loads(path.read_text())
    doc["text"] = text
    path.write_text(json.dumps(doc))


WATCHER = r"""
import json, os, sys, time
from federation import config, context, rollout
from federation.stores import database
database.BUSY_DEADLINE_S = float(os.environ.get("WATCHER_DEADLINE", "30"))
out, stop, me = sys.argv[1], sys.argv[2], sys.argv[3]
i = 0
with open(out, "a", buffering=1) as fh:
    while not os.path.exists(stop):
        info = rollout.phase_in_effect(config.settings())
        try:
            ctx = context.get_context("probe")
            context.set_context(me, f"tick {i}")
            text, err = (ctx or {}).get("text"), None
        except Exception as exc:
            text, err = None, f"{type(exc).__name__}: {exc}"
        fh.write(json.dumps({"i": i, "t": time.time(), "phase": info["phase"], "source": info["source"],
                             "text": text, "err": err}) + "\n")
        i += 1
        time.sleep(0.05)
"""


class Watcher:
    """A long-running process reading the probe agent's context and writing its own, logging each turn."""

    def __init__(self, fed, name: str, env: dict[str, str]):
        self.name = name
        self.out = fed.root.parent / f"{name}.jsonl"
        self.stop = fed.root.parent / f"{name}.stop"
        self.proc = subprocess.Popen([sys.executable, "-c", WATCHER, str(self.out), str(self.stop), name], env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(REPO))

    def lines(self) -> list[dict]:
        try:
            raw = self.out.read_text()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in raw.splitlines() if line.endswith("}")]

    def after(self, moment: float) -> list[dict]:
        return [line for line in self.lines() if line["t"] > moment]

    def finish(self) -> str:
        self.stop.touch()
        _, err = self.proc.communicate(timeout=60)
        assert self.proc.returncode == 0, err[-3000:]
        return err


# ---------------------------------------------------------------------------
# the flag record and bad input


@pytest.mark.sqlite_only
def test_bad_input_is_a_usage_error_and_changes_nothing(fed):
    """A phase of 5 or x, a sample of 2, --force without --reason: exit 2 with a clear message, flag untouched."""
    assert cli(fed, "rollout", "set", "2").exit_code == 0
    before = (fed.root / "control" / "flag.json").read_bytes()
    for args, says in [(["5"], "'5' is not one of"), (["x"], "'x' is not one of"),
                       (["3", "--sample", "2"], "--sample"), (["3", "--min-rate", "1.5"], "--min-rate"),
                       (["4", "--force"], "--force needs --reason"), (["3", "--since", "yesterday"], "--since")]:
        result = cli(fed, "rollout", "set", *args)
        assert result.exit_code == 2, (args, result.output)
        assert says in result.output, (args, result.output)
    assert (fed.root / "control" / "flag.json").read_bytes() == before
    assert [h["to"] for h in rollout.history(settings=config.settings())] == [2]


@pytest.mark.sqlite_only
def test_flag_record_is_validated_when_read(fed):
    """A hand-corrupted or invalid record is a FlagError naming the file; a valid one round-trips."""
    path = fed.root / "control" / "flag.json"
    path.parent.mkdir(parents=True)
    for raw, says in [(b"{not json", "not valid JSON"), (b"[2]", "not a JSON object"),
                      (b'{"phase": 5, "sample": 1, "set_at": "2026-01-01T00:00:00Z", "set_by": "x"}', "phase 5"),
                      (b'{"phase": 2, "sample": 2, "set_at": "2026-01-01T00:00:00Z", "set_by": "x"}', "sample 2"),
                      (b'{"phase": 2, "sample": 1, "set_at": "soon", "set_by": "x"}', "set_at"),
                      (b"\xff\xfe", "not valid JSON")]:
        path.write_bytes(raw)
        with pytest.raises(_flag.FlagError, match=says) as info:
            _flag.read_flag(fed.root)
        assert str(path) in str(info.value)
    path.unlink()
    assert _flag.read_flag(fed.root) is None
    assert cli(fed, "rollout", "set", "2", "--sample", "0.25", "--reason", "first step").exit_code == 0
    flag = _flag.read_flag(fed.root)
    assert (flag.phase, flag.sample, flag.reason, flag.forced) == (2, 0.25, "first step", False)


@pytest.mark.sqlite_only
def test_status_json_has_the_contract_shape(fed, monkeypatch):
    """rollout status --json: flag, fleet, consistency, window and history as CONTRACT says."""
    monkeypatch.setenv("FEDERATION_FLEET_TIMEOUT", "3")
    data = status_json(fed)
    assert data["flag"] is None and data["fleet"] == [] and data["consistency"] == {} and data["history"] == []
    assert cli(fed, "rollout", "set", "2", "--reason", "start the rollout").exit_code == 0
    assert cli(fed, "rollout", "set", "2").exit_code == 0  # already so: nothing recorded
    proc = subprocess.Popen([sys.executable, "-c", "from federation import context, rollout; import time; "
                             "context.heartbeat('alice'); rollout.flush(); time.sleep(60)"],
                            env=unpinned_env(fed), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        live = wait_for(lambda: [p for p in status_json(fed)["fleet"] if p["pid"] == proc.pid and p["phase"] == 2],
                        what="the process announced in phase 2")
    finally:
        proc.kill()
        proc.wait()
    data = status_json(fed)
    assert set(data) >= {"flag", "fleet", "consistency", "window", "history"}
    assert set(data["flag"]) == {"phase", "sample", "set_at", "set_by", "reason"}
    assert data["flag"]["phase"] == 2 and data["flag"]["reason"] == "start the rollout"
    assert "@" in data["flag"]["set_by"]
    assert set(live[0]) == {"host", "pid", "agent", "program", "phase", "source", "version", "started_at", "last_seen",
                            "alive"}
    assert live[0]["source"] == "flag" and live[0]["alive"] is True and live[0]["version"]
    assert set(data["window"]) == {"since", "until"}
    assert [(h["from"], h["to"], h["forced"]) for h in data["history"]] == [(3, 2, False)]
    assert set(data["history"][0]) == {"at", "from", "to", "by", "reason", "forced"}
    human = cli(fed, "rollout", "status")
    assert human.exit_code == 0 and "flag:    phase 2" in human.output and "3 -> 2" in human.output


# ---------------------------------------------------------------------------
# precedence in one process


@pytest.mark.sqlite_only
def test_precedence_env_pin_then_flag_then_default(fed, monkeypatch):
    """Environment pin > live flag > phase 3, for phase and sample, each with its source."""
    monkeypatch.setenv("FEDERATION_FLAG_CHECK", "0.05")
    runtime = Runtime()
    with config.override(FEDERATION_USE_DB=None, FEDERATION_PHASE=None, FEDERATION_SHADOW_SAMPLE=None):
        assert runtime.mode(config.settings()) == (3, 1.0) and runtime.source == "default"
        assert cli(fed, "rollout", "set", "2", "--sample", "0.5").exit_code == 0
        config.reset()  # the CLI applied its --root/--db overrides; settings are re-read
        wait_for(lambda: runtime.mode(config.settings()) == (2, 0.5), 3, what="the flag")
        assert runtime.source == "flag"
    with config.override(FEDERATION_USE_DB="0", FEDERATION_PHASE=None, FEDERATION_SHADOW_SAMPLE=None):
        assert runtime.mode(config.settings()) == (1, 0.5) and runtime.source == "env"  # pinned phase, the flag's sample
    with config.override(FEDERATION_PHASE="4", FEDERATION_USE_DB=None, FEDERATION_SHADOW_SAMPLE="1.0"):
        assert runtime.mode(config.settings()) == (4, 1.0) and runtime.source == "env"


@pytest.mark.sqlite_only
def test_corrupted_or_unreadable_flag_keeps_the_phase_and_says_so(fed, monkeypatch):
    """A hand-corrupted record, then one that cannot be read at all: an error event, the phase kept;
    a new process starts in the phase the history last recorded; rollout set repairs the record."""
    monkeypatch.setenv("FEDERATION_FLAG_CHECK", "0.05")
    path = fed.root / "control" / "flag.json"
    runtime = Runtime()
    with config.override(FEDERATION_USE_DB=None, FEDERATION_PHASE=None, FEDERATION_SHADOW_SAMPLE=None):
        assert cli(fed, "rollout", "set", "2", "--sample", "0.5").exit_code == 0
        config.reset()
        wait_for(lambda: runtime.mode(config.settings()) == (2, 0.5), 3, what="phase 2")
        with capture_logs() as logs:
            path.write_text('{"phase": 4, "sample": 1.0, "set_at": "2026-11-26T00:00:00Z", "set_by": "x"')  # torn
            time.sleep(0.1)
            for _ in range(20):
                assert runtime.mode(config.settings()) == (2, 0.5)
                time.sleep(0.01)
            path.unlink()
            path.mkdir()  # a record nobody can read (a directory is unreadable even for root)
            time.sleep(0.1)
            assert runtime.mode(config.settings()) == (2, 0.5) and runtime.source == "flag"
        errors = [e for e in logs if e["event"] == "rollout_flag_unreadable"]
        assert len(errors) == 2 and errors[0]["log_level"] == "error"
        assert "not valid JSON" in errors[0]["error"] and "cannot be read" in errors[1]["error"]
        assert errors[0]["keeping_phase"] == 2
        # a process that starts now has no phase of its own: it takes the history's last
        probe = subprocess.run([sys.executable, "-c", "from federation import config, rollout; import json; "
                                "print(json.dumps(rollout.phase_in_effect(config.settings())))"], env=unpinned_env(fed),
                               capture_output=True, text=True, timeout=60)
        (last,) = probe.stdout.splitlines()  # the library never writes to stdout: only the script's print
        info = json.loads(last)
        assert (info["phase"], info["source"]) == (2, "flag") and "cannot be read" in info["flag_error"]
        assert "rollout_flag_unreadable" in probe.stderr  # logging unconfigured: WARNING and above on stderr
        data = status_json(fed)
        assert data["flag"] is None and "cannot be read" in data["flag_error"]
        path.rmdir()
        path.write_text("garbage")
        result = cli(fed, "rollout", "set", "3", "--min-comparisons", "0")
        assert result.exit_code == 0 and "flag record was unreadable" in result.output, result.output
        config.reset()
        wait_for(lambda: runtime.mode(config.settings()) == (3, 0.5), 3, what="the repaired flag")
        assert rollout.history(settings=config.settings())[-1]["from"] == 2


# ---------------------------------------------------------------------------
# real processes following the flag


@pytest.mark.sqlite_only
def test_long_running_processes_follow_the_flag_and_a_pinned_one_stays(fed):
    """An unpinned process in phase 3 reads files within 5 s of `rollout set 2`, writes files only after
    `rollout set 1`; a process with FEDERATION_PHASE=3 stays in 3 and shows as pinned."""
    context.set_context("probe", "both sides")  # phase 3 (the fixture's pin): database and files
    edit_file_context(fed, "probe", "only in the file")
    follower = Watcher(fed, "follower", unpinned_env(fed))
    pinned = Watcher(fed, "pinned", {**unpinned_env(fed), "FEDERATION_PHASE": "3"})
    try:
        wait_for(lambda: follower.lines() and pinned.lines(), 60, what="both processes running")
        assert {(x["phase"], x["text"]) for x in follower.lines()} == {(3, "both sides")}
        fleet = wait_for(lambda: {p["pid"]: p for p in status_json(fed)["fleet"]
                                  if p["pid"] in (follower.proc.pid, pinned.proc.pid)} if
                         len([p for p in status_json(fed)["fleet"]]) >= 2 else None, what="both in the fleet")
        assert fleet[pinned.proc.pid]["source"] == "env" and fleet[follower.proc.pid]["source"] == "default"

        assert run_cli(fed, "rollout", "set", "2").returncode == 0
        switched = time.time()
        first = wait_for(lambda: [x for x in follower.after(switched) if x["text"] == "only in the file"], 5.5,
                         what="the follower reading the files")[0]
        assert first["t"] - switched < 5.0
        assert all(x["phase"] == 3 and x["text"] == "both sides" for x in pinned.lines())
        fleet = wait_for(lambda: {p["pid"]: p for p in status_json(fed)["fleet"]
                                  if p["pid"] == follower.proc.pid and p["phase"] == 2}, what="phase 2 announced")
        assert fleet[follower.proc.pid]["source"] == "flag"
        pinned_now = [p for p in status_json(fed)["fleet"] if p["pid"] == pinned.proc.pid][0]
        assert (pinned_now["phase"], pinned_now["source"]) == (3, "env")
        human = cli(fed, "rollout", "status").output
        assert "pinned (env)" in human

        store = fed.store()
        assert store.load_context("follower")["text"].startswith("tick")  # phase 2 still writes the database
        assert run_cli(fed, "rollout", "set", "1").returncode == 0
        switched = time.time()
        wait_for(lambda: [x for x in follower.after(switched) if x["phase"] == 1], 5.5, what="phase 1")
        time.sleep(0.5)
        in_db = store.load_context("follower")["text"]
        in_file = json.loads((fed.root / "nodes" / "follower" / "context_window.json").read_text())["text"]
        assert int(in_file.split()[1]) > int(in_db.split()[1]) + 3  # the files moved on, the database did not
        assert store.load_context("pinned")["text"] != "tick 0"  # the pinned one still writes it
    finally:
        follower.finish()
        pinned.finish()
    assert all(x["err"] is None for x in follower.lines() + pinned.lines())


@asynccontextmanager
async def serve(fed, name: str, env: dict[str, str]):
    params = StdioServerParameters(command=sys.executable, args=["-m", "federation", "serve", "--agent", name],
                                   env=env, cwd=str(REPO))
    with (fed.root.parent / f"serve-{name}.stderr").open("a") as errlog:
        async with stdio_client(params, errlog=errlog) as (read, write):
            async with ClientSession(read, write) as session:
                await session.initialize()
                yield session


async def _tool(session, name: str, **arguments) -> dict:
    result = await session.call_tool(name, arguments)
    assert not result.is_error, result.content
    return result.structured_content


@pytest.mark.sqlite_only
def test_mcp_server_follows_the_flag(fed):
    """A real `federation serve` (MCP over stdio) in phase 3 reads the files within 5 s of `rollout set 2`,
    announces itself with its agent, and writes only the files after `rollout set 1`."""
    context.set_context("probe", "both sides")
    edit_file_context(fed, "probe", "only in the file")

    async def scenario():
        async with serve(fed, "alice", unpinned_env(fed)) as session:
            got = await _tool(session, "get_context", agent="probe")
            assert got["context"]["text"] == "both sides"
            me = wait_for(lambda: [p for p in status_json(fed)["fleet"] if p["agent"] == "alice"], what="alice")
            assert (me[0]["phase"], me[0]["source"], me[0]["alive"]) == (3, "default", True)
            assert run_cli(fed, "rollout", "set", "2").returncode == 0
            switched = time.monotonic()
            while True:
                got = await _tool(session, "get_context", agent="probe")
                if got["context"]["text"] == "only in the file":
                    break
                assert time.monotonic() - switched < 5.0, "the server did not follow the flag within 5 s"
                await anyio.sleep(0.05)
            assert run_cli(fed, "rollout", "set", "1").returncode == 0
            wait_for(lambda: [p for p in status_json(fed)["fleet"] if p["agent"] == "alice" and p["phase"] == 1],
                     6, what="alice in phase 1")
            await _tool(session, "set_context", text="written in phase 1")
            return me[0]["pid"]

    pid = anyio.run(scenario)
    assert fed.store().load_context("alice") is None  # never reached the database
    assert json.loads((fed.root / "nodes" / "alice" / "context_window.json").read_text())["text"] == \
        "written in phase 1"
    # a clean exit withdraws the announcement
    wait_for(lambda: not [p for p in status_json(fed)["fleet"] if p["pid"] == pid], 5, what="withdrawn")


@pytest.mark.sqlite_only
def test_fleet_lists_live_processes_and_a_killed_one_as_gone(fed, monkeypatch):
    """Every live process is listed with its phase; one killed with SIGKILL is shown as gone."""
    monkeypatch.setenv("FEDERATION_FLEET_TIMEOUT", "1.5")
    context.heartbeat("seed")  # the database exists before any file (a new federation: backfilled)
    code = "from federation import context; import time; context.heartbeat('x'); time.sleep(120)"
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL) for env in
             (unpinned_env(fed), unpinned_env(fed), {**unpinned_env(fed), "FEDERATION_USE_DB": "0"})]
    pids = {p.pid for p in procs}

    def mine() -> list[dict]:  # (the test's own process is in the fleet too, pinned by the fixture)
        return [p for p in status_json(fed)["fleet"] if p["pid"] in pids]

    try:
        fleet = wait_for(lambda: (lambda f: f if len([p for p in f if p["alive"]]) == 3 else None)(mine()), 30,
                         what="three live processes")
        assert sorted((p["phase"], p["source"]) for p in fleet) == [(1, "env"), (3, "default"), (3, "default")]
        procs[0].send_signal(signal.SIGKILL)
        procs[0].wait()
        fleet = wait_for(lambda: (lambda f: f if [p for p in f if p["pid"] == procs[0].pid and not p["alive"]]
                                  else None)(mine()), 10, what="the killed one gone")
        # (a process of this host whose pid no longer exists is gone at once, not after the timeout:
        # test_operator_safety checks that with a timeout of 300 s)
        assert {p["pid"]: p["alive"] for p in fleet} == {procs[0].pid: False, procs[1].pid: True, procs[2].pid: True}
        assert "GONE" in cli(fed, "rollout", "status").output
    finally:
        for p in procs:
            p.kill()
            p.wait()


# ---------------------------------------------------------------------------
# the control files and the rest of the tools


@pytest.mark.sqlite_only
def test_control_is_ignored_by_migrate_report_and_survives_archive(fed, tmp_path):
    """control/ is not legacy data: migrate and report do not see it, archive-legacy leaves it."""
    from federation.transfer.archive import archive_legacy
    from federation.transfer.migrate import migrate
    from federation.transfer.report import build_report

    fed.phase(1)
    context.set_context("bob", "hello")
    assert cli(fed, "rollout", "set", "2", "--reason", "go").exit_code == 0
    rollout.RUNTIME.tally.observe("context", 2, compared=True)
    (fed.root / "control" / "counts").mkdir(exist_ok=True)
    (fed.root / "control" / "fleet" / "junk.json").parent.mkdir(exist_ok=True)
    (fed.root / "control" / "fleet" / "junk.json").write_text("{not json")  # readers skip it
    result = migrate(settings=config.settings())
    assert result.exit_code == 0 and result.files == 1 and not result.invalid
    report = build_report(settings=config.settings())
    assert report.consistent and not report.invalid
    fed.phase(4)
    archive_legacy(tmp_path / "legacy.tar.gz", settings=config.settings())
    assert not (fed.root / "nodes").exists()
    assert _flag.read_flag(fed.root).phase == 2 and rollout.history(settings=config.settings())[0]["reason"] == "go"
    assert status_json(fed)["flag"]["phase"] == 2


# ---------------------------------------------------------------------------
# guarded steps


def refusals(result) -> dict[str, str]:
    """{guard name: the reason it gave} for each guard a refused `rollout set` printed as failed.

    A guard that failed because it could not be checked (a broken import, an unreachable database)
    is never the refusal these tests expect: it fails here, whatever its name.
    """
    assert result.exit_code == 1, result.output
    found = {}
    for line in result.output.splitlines():
        if line.strip().startswith("[FAILED]"):
            name, _, detail = line.split("]", 1)[1].partition(":")
            found[name.strip()] = detail.strip()
    assert found, result.output
    for name, detail in found.items():
        assert not detail.startswith("could not be checked"), f"{name}: {detail}"
    return found


def refused(result) -> list[str]:
    """The guard names a refused `rollout set` printed (each with a reason that is an answer)."""
    return list(refusals(result))


def test_backfill_and_report_guards_refuse_and_force_is_recorded(fed):
    """Going to 3 on a database never backfilled refuses (backfilled); with the report finding a difference,
    2 -> 3 refuses (report_consistent) naming `sync --to db`; --force --reason passes and is in the history."""
    from federation.transfer.migrate import migrate

    fed.phase(1)
    context.set_context("bob", "from the files")
    context.set_context("carol", "also")
    assert cli(fed, "rollout", "set", "2").exit_code == 0
    result = cli(fed, "rollout", "set", "3", "--min-comparisons", "0")
    reasons = refusals(result)
    assert reasons["backfilled"].endswith(("does not exist yet and legacy files do",
                                           "was never backfilled from the legacy files")), reasons
    assert "federation migrate" in result.output
    assert migrate(settings=config.settings()).exit_code == 0
    edit_file_context(fed, "bob", "edited behind the database's back")
    result = cli(fed, "rollout", "set", "3", "--min-comparisons", "0")
    assert refused(result) == ["report_consistent"]
    assert refusals(result)["report_consistent"].startswith("`federation report` finds 1 difference(s)")
    assert "federation sync --to db" in result.output and "context" in result.output
    assert [(g["name"], g["detail"].split(":")[0]) for g in rollout.guards(3, min_comparisons=0, settings=config.settings()) if not g["ok"]] \
        == [("report_consistent", "`federation report` finds 1 difference(s)")]
    assert _flag.read_flag(fed.root).phase == 2  # refused: unchanged
    result = cli(fed, "rollout", "set", "3", "--min-comparisons", "0", "--force", "--reason", "drill: known edit")
    assert result.exit_code == 0 and "FORCED past: report_consistent" in result.output
    last = rollout.history(settings=config.settings())[-1]
    assert (last["from"], last["to"], last["forced"], last["reason"]) == (2, 3, True, "drill: known edit")
    raw = json.loads((fed.root / "control" / "history.jsonl").read_text().splitlines()[-1])
    assert raw["overridden"] == ["report_consistent"]
    flag = _flag.read_flag(fed.root)
    assert (flag.phase, flag.forced, flag.reason) == (3, True, "drill: known edit")


@pytest.mark.sqlite_only
def test_fleet_mix_guard_refuses_phase_4_beside_a_live_phase_2_process(fed):
    """Going to 4 while a live process is pinned in phase 2 refuses (fleet_mix), and back to 2 while one is
    pinned in 4; the processes themselves log the unsafe pair."""
    context.heartbeat("seed")
    code = "from federation import context; import time; context.heartbeat('p'); time.sleep(120)"
    # (these scripts configure no logging: the library's events go to stderr, merged into stdout here)
    two = subprocess.Popen([sys.executable, "-c", code], env={**unpinned_env(fed), "FEDERATION_PHASE": "2"},
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    four = None
    try:
        wait_for(lambda: [p for p in status_json(fed)["fleet"] if p["pid"] == two.pid], 30, what="the phase-2 one")
        result = cli(fed, "rollout", "set", "4", "--min-comparisons", "0")
        assert refused(result) == ["fleet_mix"]
        assert refusals(result)["fleet_mix"].startswith("1 live process(es) in phase 1 or 2")
        assert f":{two.pid} in phase 2 [env]" in result.output
        four = subprocess.Popen([sys.executable, "-c", code], env={**unpinned_env(fed), "FEDERATION_PHASE": "4"},
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        wait_for(lambda: [p for p in status_json(fed)["fleet"] if p["pid"] == four.pid], 30, what="the phase-4 one")
        assert "UNSAFE MIX" in cli(fed, "rollout", "status").output
        assert [(a["pid"], b["pid"]) for a, b in rollout.unsafe_mix(rollout.fleet(settings=config.settings()))] == [(four.pid, two.pid)]
        time.sleep(3.0)  # each process has looked at the fleet (every 10 refreshes of 0.25 s)
    finally:
        for p in (two, four):
            if p is not None:
                p.send_signal(signal.SIGINT)
    errs = [p.communicate(timeout=30)[0] for p in (two, four)]
    for err in errs:
        assert "rollout_unsafe_mix" in err, err[-2000:]
        assert f":{two.pid} in phase 2" in err and f":{four.pid} in phase 4" in err
    # and the reverse: a live pinned phase-4 process refuses a step to 2
    with config.override(FEDERATION_PHASE="4"):
        context.heartbeat("me")  # this process, pinned in 4, announces itself
        rollout.RUNTIME.tick(announce_now=True)
        assert cli(fed, "rollout", "set", "2").exit_code == 1
        failed = {g["name"]: g["detail"] for g in rollout.guards(2, settings=config.settings()) if not g["ok"]}
        assert failed["fleet_mix"].startswith("1 live process(es) in phase 4")


def test_files_current_guard_asks_for_a_sync_to_files_when_stepping_back_from_4(fed):
    """From 4 the files lag: a step back refuses (files_current) until `federation sync --to files` ran;
    to 3 a sync since phase 4 began is enough, to 1 the files must hold everything."""
    context.set_context("bob", "phase 3 text")
    assert cli(fed, "rollout", "set", "4", "--force", "--reason", "test set-up").exit_code == 0
    fed.phase(4)
    context.set_context("bob", "written in phase 4 only")
    result = cli(fed, "rollout", "set", "3")
    assert refused(result) == ["files_current"] and "federation sync --to files" in result.output
    assert refusals(result)["files_current"].startswith("the files lag the database")
    assert cli(fed, "sync", "--to", "files").exit_code == 0
    assert cli(fed, "rollout", "set", "3").exit_code == 0
    assert cli(fed, "rollout", "set", "4", "--force", "--reason", "again").exit_code == 0
    context.set_context("bob", "phase 4 again")
    assert "fleet_mix" in refused(cli(fed, "rollout", "set", "1"))  # this very process is pinned in 4
    fed.phase(3)
    context.get_context("bob")  # a call in phase 3 ...
    rollout.RUNTIME.tick(announce_now=True)  # ... announced now, not at the next refresh
    result = cli(fed, "rollout", "set", "1")
    assert refused(result) == ["files_current"]  # the earlier sync was before this phase 4
    assert refusals(result)["files_current"].startswith("the files lag the database")
    assert cli(fed, "sync", "--to", "files").exit_code == 0
    assert cli(fed, "rollout", "set", "1").exit_code == 0
    assert [h["to"] for h in rollout.history(settings=config.settings())] == [4, 3, 4, 1]
    assert json.loads((fed.root / "nodes" / "bob" / "context_window.json").read_text())["text"] == "phase 4 again"


@pytest.mark.postgresql_only
def test_set_1_works_with_the_database_unreachable(fed, pg_server):
    """PostgreSQL stopped: `rollout set 1` succeeds at once and an unpinned process then serves from the files."""
    fed.env["FEDERATION_DB_URL"] = pg_server.url
    fed.apply()
    context.set_context("probe", "both sides")
    watcher = Watcher(fed, "w", {**unpinned_env(fed), "WATCHER_DEADLINE": "2"})
    try:
        wait_for(lambda: [x for x in watcher.lines() if x["err"] is None and x["phase"] == 3], 60, what="phase 3")
        pg_server.stop("fast")
        wait_for(lambda: [x for x in watcher.lines() if x["err"] and "StorageError" in x["err"]], 15,
                 what="the database failing")
        t0 = time.monotonic()
        result = run_cli(fed, "rollout", "set", "1", "--reason", "database down")
        assert result.returncode == 0, result.stderr
        assert time.monotonic() - t0 < 10
        switched = time.time()
        served = wait_for(lambda: [x for x in watcher.after(switched) if x["phase"] == 1 and x["err"] is None], 10,
                          what="served from the files")
        assert served[0]["text"] == "both sides"
        status = json.loads(run_cli(fed, "rollout", "status", "--json").stdout)
        assert status["flag"]["phase"] == 1 and status["history"][-1]["reason"] == "database down"
    finally:
        watcher.finish()


# ---------------------------------------------------------------------------
# counted consistency

READER = r"""
import sys
from federation import context
for name in sys.argv[1].split(","):
    context.get_context(name)
"""


@pytest.mark.sqlite_only
def test_counted_consistency_is_exact_across_processes(fed):
    """K compared reads with M files edited behind the shim's back: comparisons = K and mismatches = M,
    summed over three processes; the mismatches are kept with their diffs; the rate guards use them."""
    agents = [f"agent-{i:02d}" for i in range(20)]
    for name in agents:
        context.set_context(name, f"{name} at work")
    edited = agents[3:8]
    for name in edited:
        edit_file_context(fed, name, "edited by hand")
    procs = [subprocess.run([sys.executable, "-c", READER, ",".join(agents)], env=unpinned_env(fed),
                            capture_output=True, text=True, timeout=60) for _ in range(3)]
    assert all(p.returncode == 0 for p in procs), procs[0].stderr[-2000:]
    counted = rollout.consistency(settings=config.settings())["context"]
    assert (counted["comparisons"], counted["mismatches"], counted["errors"]) == (3 * 20, 3 * 5, 0)
    assert counted["rate"] == pytest.approx(1 - 15 / 60)
    assert counted["db_ms"]["p50"] is not None and counted["files_ms"]["p99"] >= counted["files_ms"]["p50"]
    by_phase = [c for c in rollout.counters(settings=config.settings()) if c["entity"] == "context"]
    assert [(c["phase"], c["comparisons"]) for c in by_phase] == [(3, 60)]
    hist = by_phase[0]["latency"]["files"]
    assert sum(hist["counts"]) >= 60 and len(hist["counts"]) == len(hist["bounds_ms"]) + 1
    points = rollout.series(settings=config.settings())["context"]
    assert len(points) in (24, 25) and sum(p["comparisons"] for p in points) == 60
    recent = rollout.recent_mismatches(limit=1000, settings=config.settings())
    assert len(recent) == 15 and {r["key"] for r in recent} == set(edited)
    assert recent[0]["diff"] == [{"field": "text", "db": f"{recent[0]['key']} at work", "files": "edited by hand"}]
    assert recent[0]["authority"] == "db" and recent[0]["op"] == "load_context" and recent[0]["phase"] == 3
    assert [r["at"] for r in recent] == sorted((r["at"] for r in recent), reverse=True)
    # the rate guards refuse on these counts
    result = cli(fed, "rollout", "set", "4", "--min-comparisons", "100")
    names = refused(result)
    assert "consistency_rate" in names and "enough_comparisons" in names and "report_consistent" in names
    assert "rate 0.750000 < 0.999" in result.output and "60 comparison(s), 15 mismatch(es)" in result.output
    # report --log takes its rate from the same counts
    log = fed.root.parent / "empty.log"
    log.write_text("")
    rep = cli(fed, "report", "--json", "--log", str(log))
    summary = json.loads(rep.stdout)["log"]
    assert summary["rate_source"] == "counted" and summary["comparisons"] == 60 and summary["mismatches"] == 15
    assert summary["entities"]["context"]["consistency_rate"] == pytest.approx(0.75)


@pytest.mark.sqlite_only
def test_sample_from_the_flag_compares_about_a_tenth(fed):
    """`rollout set --sample 0.1`: an unpinned process compares about K/10 of K reads."""
    context.set_context("probe", "same on both sides")
    assert cli(fed, "rollout", "set", "3", "--sample", "0.1").exit_code == 0
    code = "from federation import context\nfor _ in range(1000):\n    context.get_context('probe')\n"
    proc = subprocess.run([sys.executable, "-c", code], env=unpinned_env(fed), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    counted = rollout.consistency(settings=config.settings())["context"]
    assert 60 <= counted["comparisons"] <= 140, counted  # binomial(1000, 0.1): 100 +- 4 standard deviations
    assert counted["mismatches"] == 0 and counted["rate"] == 1.0


# ---------------------------------------------------------------------------
# the whole rollout, forth and back, under live votes

VOTER = r"""
import json, os, sys, time
from federation import config, governance, rollout
poll, me, go, stop = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
governance.get_poll(poll)  # a first call: the process is in the fleet
while not os.path.exists(go) and not os.path.exists(stop):
    time.sleep(0.01)
cast, phases, j = 0, set(), 0
while not os.path.exists(stop):
    governance.vote(poll, f"{me}-{j}", "yes" if j % 2 else "no")
    cast += 1
    if j % 3 == 0:
        governance.get_poll(poll)  # reads: compared (and counted) in phases 2 and 3
    phases.add(rollout.phase_in_effect(config.settings())["phase"])
    j += 1
    time.sleep(0.03)
print(json.dumps({"cast": cast, "phases": sorted(phases)}))
"""


@pytest.mark.sqlite_only
def test_eight_voters_through_every_step_and_back_lose_no_vote(fed):
    """8 processes vote while the operator steps 1 -> 2 -> 3 -> 4 -> 3 -> 2 -> 1 with `rollout set` and the
    syncs the guards ask for: no vote is lost, and `report` agrees at the end."""
    fed.phase(1)
    poll = governance.create_poll("lead", "Ship it?", ["yes", "no"])
    assert cli(fed, "rollout", "set", "1", "--reason", "start").exit_code == 0
    assert cli(fed, "migrate").exit_code == 0
    # this test process itself stays out of the way: pinned in 3 (safe beside every phase; it makes no
    # call while the fleet is in 4)
    fed.phase(3)
    governance.get_poll(poll)
    rollout.RUNTIME.tick(announce_now=True)
    go, stop = fed.root.parent / "go", fed.root.parent / "stop"
    env = unpinned_env(fed, FEDERATION_FLAG_CHECK="0.2")
    voters = [subprocess.Popen([sys.executable, "-c", VOTER, poll, f"v{i}", str(go), str(stop)], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(8)]
    pids = {p.pid for p in voters}

    def fleet_in(phase: int) -> bool:
        mine = [p for p in status_json(fed)["fleet"] if p["pid"] in pids and p["alive"]]
        return len(mine) == 8 and all(p["phase"] == phase for p in mine)

    def step(phase: int, *extra: str, tries: int = 1, before_retry=None) -> None:
        for attempt in range(tries):
            result = cli(fed, "rollout", "set", str(phase), *extra)
            if result.exit_code == 0:
                break
            assert attempt + 1 < tries, result.output
            before_retry()
        wait_for(lambda: fleet_in(phase), 20, interval=0.2, what=f"the fleet in phase {phase}")

    def comparisons_since(moment) -> int:
        return rollout.totals(since=moment, settings=config.settings())["comparisons"]

    try:
        wait_for(lambda: fleet_in(1), 60, interval=0.2, what="8 voters in phase 1")
        go.touch()
        time.sleep(0.5)
        step(2)
        # catch up the phase-1 votes under live phase-2 votes: sync decides each poll under the polls lock
        assert cli(fed, "sync", "--to", "db").exit_code == 0
        caught_up = rollout._io.utcnow()
        wait_for(lambda: comparisons_since(caught_up) >= 30, 30, interval=0.2, what="comparisons in phase 2")
        step(3, "--since", caught_up.isoformat(), "--min-comparisons", "30", tries=3,
             before_retry=lambda: cli(fed, "migrate"))
        in_three = rollout._io.utcnow()
        wait_for(lambda: comparisons_since(in_three) >= 30, 30, interval=0.2, what="comparisons in phase 3")
        step(4, "--since", in_three.isoformat(), "--min-comparisons", "30", tries=3,
             before_retry=lambda: cli(fed, "sync", "--to", "files"))
        time.sleep(0.5)
        assert refused(cli(fed, "rollout", "set", "3")) == ["files_current"]
        assert cli(fed, "sync", "--to", "files").exit_code == 0
        step(3)
        assert cli(fed, "sync", "--to", "files").exit_code == 0  # what phase 4 wrote after the first sync
        step(2)
        step(1)
        time.sleep(0.5)
    finally:
        stop.touch()
        outs = [p.communicate(timeout=60) for p in voters]
    for (out, err), p in zip(outs, voters):
        assert p.returncode == 0, err[-3000:]
    results = [json.loads(out.splitlines()[-1]) for out, _ in outs]
    cast = sum(r["cast"] for r in results)
    assert cast >= 200  # real traffic through every step
    assert all(r["phases"] == [1, 2, 3, 4] for r in results), results
    files = json.loads((fed.root / "shared" / "polls.json").read_text())[poll]["votes"]
    assert len(files) == cast  # phase 1 is authoritative at the end: every vote is in the files
    assert cli(fed, "sync", "--to", "db").exit_code == 0  # what phase 1 wrote at the end
    assert cli(fed, "report").exit_code == 0
    assert len(fed.store().load_poll(poll)["votes"]) == cast
    # (no flag on an un-backfilled legacy tree: the fleet was on the files, phase 1, by default)
    assert [(h["from"], h["to"]) for h in rollout.history(settings=config.settings())] == [(1, 1), (1, 2), (2, 3), (3, 4), (4, 3), (3, 2),
                                                                  (2, 1)]


@pytest.mark.sqlite_only
def test_a_control_folder_that_cannot_be_written_costs_a_warning_not_a_call(fed):
    """control/fleet and control/counts unusable (here: plain files where folders belong): every call
    succeeds, and the process warns that the fleet cannot see it."""
    context.set_context("probe", "text")
    for name in ("fleet", "counts", "mismatches"):
        target = fed.root / "control" / name
        remove_tree(target)
        target.parent.mkdir(exist_ok=True)
        target.write_text("not a folder")
    edit_file_context(fed, "probe", "edited")  # a mismatch to write, too
    code = ("from federation import context, rollout\n"
            "for _ in range(20):\n"
            "    assert context.get_context('probe')['text'] == 'text'\n"
            "rollout.flush()\n"
            "print('calls ok')\n")
    proc = subprocess.run([sys.executable, "-c", code], env=unpinned_env(fed), capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout == "calls ok\n"  # the library's warnings never reach stdout
    assert "rollout_counts_flush_failed" in proc.stderr and "rollout_announce_failed" in proc.stderr


@pytest.mark.sqlite_only
def test_a_call_in_flight_finishes_in_the_phase_it_started_in(fed, monkeypatch):
    """A read that started in phase 3 and waits on its lock while the flag moves to 2 still reads the
    database (phase 3's authority); the next call reads the files."""
    import threading

    from federation import core

    monkeypatch.setenv("FEDERATION_FLAG_CHECK", "0.05")
    context.set_context("probe", "in the database")
    edit_file_context(fed, "probe", "in the file")
    with config.override(FEDERATION_USE_DB=None, FEDERATION_PHASE=None):
        assert rollout.phase_in_effect(config.settings())["phase"] == 3
        got: list[str] = []
        with core.file_lock("node-probe"):  # the dual read of the probe's context takes this lock
            reader = threading.Thread(target=lambda: got.append(context.get_context("probe")["text"]))
            reader.start()
            time.sleep(0.2)  # the reader has decided its phase (3) and waits for the lock
            assert not got
            assert cli(fed, "rollout", "set", "2").exit_code == 0
            config.set_overrides({"FEDERATION_USE_DB": None, "FEDERATION_PHASE": None})  # (the CLI set its own)
            wait_for(lambda: rollout.phase_in_effect(config.settings())["phase"] == 2, 3, what="phase 2")
        reader.join(10)
        assert got == ["in the database"]
        assert context.get_context("probe")["text"] == "in the file"


@pytest.mark.sqlite_only
def test_a_process_killed_on_another_host_is_known_gone_within_10_s(fed):
    """Issue 29: with the default timings, a SIGKILLed process of another host (its own UTS namespace,
    so another hostname: its pid cannot be checked from here) is shown gone within 10 s, not 30."""
    if shutil.which("unshare") is None or subprocess.run(["unshare", "--uts", "true"]).returncode != 0:
        pytest.skip("cannot make a UTS namespace here (unshare --uts needs root)")
    env = fed.subprocess_env()
    for var in ("FEDERATION_FLEET_REFRESH", "FEDERATION_FLEET_TIMEOUT"):
        env.pop(var, None)  # the defaults are what is promised
    code = "from federation import context; import time; context.heartbeat('far'); print('up', flush=True); time.sleep(120)"
    far = subprocess.Popen(["unshare", "--uts", "sh", "-c", 'hostname far-host && exec "$0" -c "$1"',
                            sys.executable, code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert far.stdout.readline().strip() == "up", far.stderr.read()[-2000:]

        def far_entry(alive: bool):
            return [p for p in rollout.fleet(settings=config.settings()) if p["host"] == "far-host" and p["alive"] is alive]

        wait_for(lambda: far_entry(True), 10, what="the far host's announcement")
        time.sleep(2.5)  # it has refreshed since (its last_seen is recent, not its first)
        far.kill()
        killed = time.monotonic()
        wait_for(lambda: far_entry(False), 15, interval=0.2, what="the far process shown gone")
        assert time.monotonic() - killed <= 10.0
    finally:
        far.kill()
        far.wait(timeout=30)
