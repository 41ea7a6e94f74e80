"""The shared disk is untrusted input (issue 16, CONTRACT "Untrusted files").

Nothing found under the root may delete or read outside it, hang a reader, or
stop the fleet: a message file is acted on by its own name, links are never
followed, only regular files are read (never a blocking open), size and JSON
nesting are bounded, control files are validated like user input.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from federation import config, governance, messaging
from federation.errors import FederationError
from federation.transfer.migrate import migrate
from federation.transfer.report import build_report

from test_rollout import REPO, run_cli, unpinned_env  # noqa: E402

DEEP = 100_000
#: generous: the machine running the tests may be loaded; a hang is forever
BOUND_S = 60.0


def bounded(fn, seconds: float = BOUND_S):
    """*fn()* run in a thread that must finish within *seconds* (a blocking open would hang it forever)."""
    box: dict = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            box["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"{fn} did not return within {seconds} s (a blocking open?)"
    if "error" in box:
        raise box["error"]
    return box["value"]


def write(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def message(sender: str = "alice", content: str = "hello", **extra) -> dict:
    return {"sender": sender, "content": content, "message_type": "task", "timestamp": "2024-01-01T00:00:00",
            **extra}


def outside_state(tmp_path: Path, root: Path) -> dict[str, bytes]:
    """Every file under the test's temp dir but outside the root, with its bytes."""
    return {str(p): p.read_bytes() for p in tmp_path.rglob("*")
            if p.is_file() and not p.is_symlink() and root not in p.parents and p.suffix == ".json"}


def invalid_paths(result) -> set[str]:
    return {i["path"] for i in result.invalid}


# ---------------------------------------------------------------------------
# names come from where a file was found


@pytest.mark.parametrize("phase", [1, 3])
def test_crafted_message_ids_delete_nothing_and_are_not_delivered(fed, tmp_path, phase):
    """A body id naming another path deletes nothing (outside the root or another agent's file), and the
    file is never delivered, let alone on every check; its own good neighbour is delivered once."""
    root = fed.root
    victim = write(tmp_path / "victim.json", {"keep": "me"})  # nodes/bob/inbox/../../../../victim.json
    alice_ctx = write(root / "nodes" / "alice" / "context_window.json",
                      {"agent": "alice", "text": "mine", "updated_at": "2024-01-01T00:00:00"})
    polls = write(root / "shared" / "polls.json", {})
    inbox = root / "nodes" / "bob" / "inbox"
    write(inbox / "crafted.json", message(id="../../../../victim"))
    write(inbox / "crafted2.json", message(id="../../alice/context_window"))
    write(inbox / "crafted3.json", message(id="../../../shared/polls"))
    write(inbox / "good.json", message(content="the real one"))
    before = {p: p.read_bytes() for p in (victim, alice_ctx, polls)}
    result = migrate(settings=config.settings())
    assert result.exit_code == 3
    assert {str(inbox / f"crafted{n}.json") for n in ("", "2", "3")} <= invalid_paths(result)
    assert all("file name is the id" in i["reason"] for i in result.invalid if "crafted" in i["path"])
    fed.phase(phase)
    first = messaging.check_inbox("bob")
    second = messaging.check_inbox("bob")
    assert [m["content"] for m in first] == ["the real one"] and second == []
    assert {p: p.read_bytes() for p in (victim, alice_ctx, polls)} == before
    assert all((inbox / f"crafted{n}.json").exists() for n in ("", "2", "3"))  # left for the operator


@pytest.mark.parametrize("phase", [1, 3])
def test_message_whose_body_names_another_recipient_is_invalid(fed, phase):
    """nodes/bob/inbox/m1.json saying recipient carol goes to neither of them, and migrate and report list it."""
    inbox = fed.root / "nodes" / "bob" / "inbox"
    write(inbox / "m1.json", message(recipient="carol", content="for whom?"))
    write(inbox / "m2.json", message(recipient="bob", content="for bob"))
    result = migrate(settings=config.settings())
    assert result.exit_code == 3
    assert [i for i in result.invalid if i["path"] == str(inbox / "m1.json")][0]["reason"] == \
        "its body says recipient 'carol' but it is in 'bob''s inbox"
    assert str(inbox / "m1.json") in {i["path"] for i in build_report(settings=config.settings()).invalid}
    fed.phase(phase)
    assert messaging.check_inbox("carol") == []
    assert [m["content"] for m in messaging.check_inbox("bob")] == ["for bob"]
    assert (inbox / "m1.json").exists()


# ---------------------------------------------------------------------------
# links are not followed


def test_symlinked_agent_folder_and_files_import_and_delete_nothing(fed, tmp_path):
    """nodes/evil -> outside, and file links (context, message, polls.json, sessions folder): listed by
    migrate, nothing imported through them, and phase-1 reads neither deliver nor delete anything outside."""
    root, outside = fed.root, tmp_path / "outside"
    write(outside / "inbox" / "m1.json", message(content="outside message"))
    write(outside / "ctx.json", {"agent": "bob", "text": "outside context"})
    write(outside / "m.json", message(content="outside file"))
    write(outside / "polls.json", {"p1": {"id": "p1", "question": "Q?", "options": ["a", "b"], "creator": "x",
                                          "created_at": "2024-01-01T00:00:00"}})
    write(outside / "sessions" / "s1.json", {"id": "s1", "title": "t", "lead": "x", "created_at": "2024"})
    (root / "nodes").mkdir(parents=True)
    (root / "nodes" / "evil").symlink_to(outside)
    (root / "nodes" / "bob" / "inbox").mkdir(parents=True)
    (root / "nodes" / "bob" / "context_window.json").symlink_to(outside / "ctx.json")
    (root / "nodes" / "bob" / "inbox" / "m2.json").symlink_to(outside / "m.json")
    (root / "shared").mkdir()
    (root / "shared" / "polls.json").symlink_to(outside / "polls.json")
    (root / "shared" / "sessions").symlink_to(outside / "sessions")
    before = outside_state(tmp_path, root)
    result = migrate(settings=config.settings())
    assert result.exit_code == 3
    assert {str(root / "nodes" / "evil"), str(root / "nodes" / "bob" / "context_window.json"),
            str(root / "nodes" / "bob" / "inbox" / "m2.json"), str(root / "shared" / "polls.json"),
            str(root / "shared" / "sessions")} <= invalid_paths(result)
    assert all("symbolic link" in i["reason"] for i in result.invalid)
    assert sum(e["rows"] for e in result.entities.values()) == 0  # nothing imported through a link
    fed.phase(1)
    assert messaging.check_inbox("evil") == [] and messaging.check_inbox("bob") == []
    assert governance.list_sessions() == []  # a linked folder is not listed through
    from federation import context

    for read in (governance.list_polls, lambda: context.get_context("bob")):  # a typed error naming the link
        with pytest.raises(FederationError, match="symbolic link"):
            read()
    with pytest.raises(FederationError, match="symbolic link"):
        messaging.send_message("alice", "evil", "through the link?")  # never written outside the root
    assert outside_state(tmp_path, root) == before


# ---------------------------------------------------------------------------
# only regular files, bounded


@pytest.mark.parametrize("phase", [1, 3])
def test_deep_and_fifo_legacy_messages_are_listed_and_reads_return_the_rest(fed, phase):
    """A message nested 100,000 deep and a FIFO: migrate lists both (exit 3) within bounded time, and
    reads return the other messages (no RecursionError, no hang)."""
    inbox = fed.root / "nodes" / "bob" / "inbox"
    write(inbox / "deep.json", '{"sender": "alice", "content": ' + "[" * DEEP + "]" * DEEP + "}")
    os.mkfifo(inbox / "fifo.json")
    write(inbox / "good.json", message(content="readable"))
    result = bounded(lambda: migrate(settings=config.settings()))
    assert result.exit_code == 3
    reasons = {Path(i["path"]).name: i["reason"] for i in result.invalid}
    assert "nested deeper than" in reasons["deep.json"] and "FIFO" in reasons["fifo.json"]
    assert bounded(lambda: migrate(dry_run=True, settings=config.settings())).exit_code == 3
    assert bounded(lambda: build_report(settings=config.settings())).invalid
    fed.phase(phase)
    assert [m["content"] for m in bounded(lambda: messaging.peek_inbox("bob"))] == ["readable"]
    assert [m["content"] for m in bounded(lambda: messaging.check_inbox("bob"))] == ["readable"]


def test_deep_and_fifo_files_in_phase_one_are_typed_errors(fed):
    """A deep polls.json and a FIFO session: a typed error naming the file, in bounded time."""
    fed.phase(1)
    write(fed.root / "shared" / "polls.json", "{\"p\": " + "[" * DEEP + "]" * DEEP + "}")
    with pytest.raises(FederationError, match="nested deeper"):
        bounded(governance.list_polls)
    os.mkfifo(fed.root / "shared" / "polls.json.tmp")
    (fed.root / "shared" / "polls.json").unlink()
    os.rename(fed.root / "shared" / "polls.json.tmp", fed.root / "shared" / "polls.json")
    with pytest.raises(FederationError, match="FIFO"):
        bounded(governance.list_polls)


# ---------------------------------------------------------------------------
# domain rules on imported data


@pytest.mark.parametrize("phase", [1, 3])
def test_poisoned_votes_are_listed_and_not_counted(fed, phase):
    """A vote holding a list, or naming no option of its poll: listed by migrate and report, not counted,
    no TypeError from get_poll/list_polls; the good vote counts."""
    polls = write(fed.root / "shared" / "polls.json", {"p1": {
        "id": "p1", "question": "Q?", "options": ["a", "b"], "creator": "alice", "created_at": "2024-01-01",
        "votes": {"bob": "a", "carol": ["a", "b"], "dave": "zzz", "erin": {"x": 1}}}})
    result = migrate(settings=config.settings())
    assert result.exit_code == 3
    assert sorted(i["reason"] for i in result.invalid) == [
        "poll 'p1': the vote of 'carol' is not imported: a vote must be a string, found array",
        "poll 'p1': the vote of 'dave' is not imported: 'zzz' is not an option of the poll",
        "poll 'p1': the vote of 'erin' is not imported: a vote must be a string, found object"]
    assert {i["path"] for i in result.invalid} == {str(polls)}
    assert len(build_report(settings=config.settings()).invalid) == 3
    fed.phase(phase)
    poll = governance.get_poll("p1")
    assert poll["tally"] == {"a": 1, "b": 0} and poll["votes"] == {"bob": "a"}
    assert [p["tally"] for p in governance.list_polls()] == [{"a": 1, "b": 0}]


# ---------------------------------------------------------------------------
# cursors, doctor, dashboard


@pytest.mark.parametrize("phase", [1, 3])
def test_history_cursor_of_another_agent_is_refused(fed, phase):
    """get_history(bob, before=<an entry of carol's>) is a ValidationError in every phase."""
    from federation.errors import ValidationError

    fed.phase(phase)
    messaging.send_message("alice", "carol", "to carol")
    messaging.send_message("alice", "bob", "to bob")
    messaging.check_inbox("carol")
    carols = messaging.get_history("carol")
    assert carols
    for entry in carols:
        with pytest.raises(ValidationError):
            messaging.get_history("bob", before=messaging.history_cursor(entry))
    mine = messaging.get_history("bob")
    assert messaging.get_history("bob", before=messaging.history_cursor(mine[-1])) == mine[:-1]


@pytest.mark.sqlite_only
def test_doctor_opens_the_database_exactly_at_its_path(fed, tmp_path):
    """A '#' and a '?' in FEDERATION_DB: doctor checks that file, and creates no other."""
    odd = tmp_path / "odd#dir?x" / "fed#1.db"
    odd.parent.mkdir()
    fed.env["FEDERATION_DB"] = str(odd)
    fed.apply()
    fed.phase(3)
    messaging.send_message("alice", "bob", "hi")  # creates the database at the odd path

    def names() -> list[str]:  # control/ aside: the control plane's thread writes there at any moment
        return sorted(p.name for p in tmp_path.rglob("*") if "control" not in p.relative_to(tmp_path).parts)

    listing = names()
    from federation.operations.doctor import doctor

    checks = doctor(settings=config.settings())
    integrity = [c for c in checks.checks if c.name == "database_integrity"][0]
    assert integrity.ok, integrity
    assert "schema_version" in {c.name for c in checks.checks}
    assert [c for c in checks.checks if c.name == "schema_version"][0].ok
    assert names() == listing  # no stray file such as "fed"


# ---------------------------------------------------------------------------
# control files


#: An unpinned agent: sends itself a message and claims it, every 50 ms, until the stop file appears;
#: prints (calls that worked, calls that failed with their errors, the phases it was in).
AGENT = r"""
import json, os, sys, time
from federation import config, messaging, rollout
stop = sys.argv[1]
ok, failed, phases = 0, [], set()
while not os.path.exists(stop):
    try:
        messaging.send_message("agent", "agent", "tick")
        messaging.check_inbox("agent")
        ok += 1
        phases.add(rollout.phase_in_effect(config.settings())["phase"])
    except Exception as exc:
        failed.append(f"{type(exc).__name__}: {exc}"[:300])
    if ok == 1:
        print("started", flush=True)
    time.sleep(0.05)
print(json.dumps({"ok": ok, "failed": failed[:5], "phases": sorted(phases)}), flush=True)
"""


def poison(path: Path, kind: str) -> None:
    if path.exists() or path.is_symlink():
        path.unlink()
    if kind == "deep":
        path.write_text("[" * DEEP + "]" * DEEP)
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "link":
        path.symlink_to(path.parent.parent.parent / "elsewhere.json")
        write(path.parent.parent.parent / "elsewhere.json", {"phase": 4, "sample": 1.0, "set_at": "2026-01-01",
                                                              "set_by": "x"})
    else:
        path.write_text('{"phase": NaN, "sample": Infinity, "set_at": "2026-01-01", "set_by": "x"}')


@pytest.mark.sqlite_only
@pytest.mark.parametrize("kind", ["deep", "fifo", "link"])
def test_poisoned_flag_does_not_stop_the_fleet(fed, tmp_path, kind):
    """A flag nested 100,000 deep, a FIFO, a link: a running agent keeps working in its phase, a new one
    starts in the history's phase, `rollout status` (text and --json) answers naming the file and why, and
    `rollout set 1 --force --reason` rewrites it."""
    assert run_cli(fed, "rollout", "set", "1").returncode == 0
    flag = fed.root / "control" / "flag.json"
    stop = tmp_path / "stop"
    agent = subprocess.Popen([sys.executable, "-c", AGENT, str(stop)], env=unpinned_env(fed),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(REPO))
    try:
        assert agent.stdout.readline().strip() == "started"
        poison(flag, kind)
        time.sleep(1.0)  # the agent rechecks the flag every few hundred ms meanwhile
        probe = subprocess.run([sys.executable, "-c", "import json; from federation import config, rollout, messaging; "
                                "messaging.send_message('new', 'new', 'x'); "
                                "print(json.dumps(rollout.phase_in_effect(config.settings())))"],
                               env=unpinned_env(fed), capture_output=True, text=True, timeout=BOUND_S)
        assert probe.returncode == 0, probe.stderr[-2000:]
        info = json.loads(probe.stdout.splitlines()[-1])
        assert info["phase"] == 1 and str(flag) in info["flag_error"]
        text = run_cli(fed, "rollout", "status")
        assert text.returncode == 0, text.stderr[-2000:]
        assert "UNREADABLE" in text.stdout and str(flag) in text.stdout
        as_json = run_cli(fed, "rollout", "status", "--json")
        assert as_json.returncode == 0, as_json.stderr[-2000:]
        reason = {"deep": "nested deeper", "fifo": "FIFO", "link": "symbolic link"}[kind]
        assert reason in json.loads(as_json.stdout)["flag_error"]
    finally:
        stop.touch()
        out, err = agent.communicate(timeout=BOUND_S)
    done = json.loads(out.splitlines()[-1])
    assert done["failed"] == [] and done["phases"] == [1] and done["ok"] > 10, (done, err[-2000:])
    repaired = run_cli(fed, "rollout", "set", "1", "--force", "--reason", "repair the poisoned flag")
    assert repaired.returncode == 0, repaired.stderr[-2000:]
    from federation.rollout import read_flag

    assert read_flag(fed.root).phase == 1 and not flag.is_symlink()


def _counts_file(root: Path, cells: list, name: str = "h-1-1.json") -> Path:
    from federation.rollout._counts import LATENCY_BOUNDS_MS, hour_name

    hour = int(time.time()) // 3600 * 3600
    return write(root / "control" / "counts" / hour_name(hour) / name,
                 json.dumps({"host": "h", "pid": 1, "started_at": "x", "bucket_seconds": 60,
                             "bounds_ms": list(LATENCY_BOUNDS_MS), "cells": cells}, allow_nan=True)
                 .replace('"BIG"', "1e400"))  # valid JSON, a float overflowing to infinity


def _cell(**over) -> dict:
    from federation.rollout._counts import LATENCY_BOUNDS_MS

    n = len(LATENCY_BOUNDS_MS) + 1
    cell = {"start": int(time.time()) // 60 * 60 - 60, "entity": "context", "phase": 2, "comparisons": 10,
            "mismatches": 1, "errors": 0, "latency": {"files": {"counts": [10] + [0] * (n - 1), "sum_ms": 1.0},
                                                      "db": {"counts": [10] + [0] * (n - 1), "sum_ms": 1.0}}}
    cell.update(over)
    return cell


#: strict JSON, wrong types and values: each cell is skipped, the file's good cells are counted
POISONED_CELLS = [
    _cell(mismatches="3"), _cell(comparisons=-5, mismatches=-1), _cell(errors=[[[1]]]), _cell(phase="2"),
    _cell(comparisons="BIG"), _cell(latency={"files": {"counts": [-1] * 17, "sum_ms": "BIG"}}),
    _cell(mismatches=50), "not a cell", _cell(entity={"x": 1}), _cell(start="soon"), _cell(comparisons=2.5),
]
#: NaN and Infinity are not JSON: the whole file is skipped
NAN_CELLS = [_cell(comparisons=float("nan")), _cell(start=float("nan")),
             _cell(latency={"files": {"counts": [float("inf")] * 17, "sum_ms": float("nan")}})]


@pytest.mark.sqlite_only
def test_poisoned_counts_fleet_history_and_mismatches_status_and_dashboard_answer(fed):
    """NaN, Infinity, strings, negatives and deep nesting in the count, fleet, mismatch, history and syncs
    files: `rollout status` (text and strict --json) and the dashboard answer, counting only the good cell."""
    root = fed.root
    _counts_file(root, [_cell()] + POISONED_CELLS)
    _counts_file(root, NAN_CELLS, name="h-5-5.json")
    _counts_file(root, [], name="h-2-2.json").write_text("[" * DEEP + "]" * DEEP)
    os.mkfifo(_counts_file(root, [], name="h-3-3.json").with_suffix(".fifo"))
    os.rename(root / "control" / "counts" / next(os.scandir(root / "control" / "counts")).name / "h-3-3.fifo",
              root / "control" / "counts" / next(os.scandir(root / "control" / "counts")).name / "h-4-4.json")
    fleet = root / "control" / "fleet"
    write(fleet / "h-1.json", '{"host": "h", "pid": NaN, "phase": Infinity, "last_seen": "2026-01-01"}')
    write(fleet / "h-2.json", {"host": ["x"], "pid": -3, "phase": "4", "agent": {"a": 1}, "last_seen": 5})
    write(fleet / "h-3.json", "[" * DEEP + "]" * DEEP)
    os.mkfifo(fleet / "h-4.json")
    write(root / "control" / "history.jsonl", "[" * DEEP + "]" * DEEP + "\n"
          + '{"at": "2026-01-01", "from": NaN, "to": Infinity}\n' + json.dumps({"at": "x", "to": "1"}) + "\n")
    write(root / "control" / "syncs.jsonl", '{"at": NaN}\n' + "{" * 5000 + "\n")
    write(root / "control" / "mismatches" / "h-1.jsonl", '{"at": "2026", "diff": NaN}\n' + "[" * DEEP + "\n"
          + json.dumps({"at": "2026-01-02", "entity": "context", "diff": []}) + "\n")
    for args in (("rollout", "status"), ("rollout", "status", "--json")):
        result = run_cli(fed, *args)
        assert result.returncode == 0, result.stderr[-3000:]
        assert "Traceback" not in result.stderr
    data = json.loads(run_cli(fed, "rollout", "status", "--json").stdout, parse_constant=lambda c: pytest.fail(c))
    assert data["consistency"]["context"]["comparisons"] == 10  # only the good cell
    assert data["consistency"]["context"]["mismatches"] == 1
    assert all(p["pid"] is None and p["phase"] is None for p in data["fleet"])
    skipped = {Path(e["path"]).name: e["reason"] for e in data["control_errors"]}
    assert "11 cell(s)" in skipped["h-1-1.json"] and "NaN" in skipped["h-5-5.json"]
    assert {"h-1-1.json", "h-2-2.json", "h-4-4.json", "h-5-5.json", "h-1.json", "h-3.json", "h-4.json",
            "history.jsonl"} <= set(skipped), skipped
    assert "FIFO" in skipped["h-4.json"] and "nested deeper" in skipped["h-3.json"]

    from test_dashboard import Dashboard

    dash = Dashboard(fed, env={"FEDERATION_USE_DB": "0"})
    try:
        for path in ("/api/status", "/api/dashboard", "/api/status?since=1h", "/metrics"):
            got = bounded(lambda: dash.get(path))
            assert got.status == 200, (path, got.text[:2000])
        status = dash.get("/api/status").json()
        assert status["consistency"]["context"]["comparisons"] == 10
        assert "control_errors" in status
        bad = dash.get("/api/status?since=99999999999d")
        assert bad.status == 400, bad.text
    finally:
        dash.stop()


# ---------------------------------------------------------------------------
# resource hygiene


def _fds(pid: int) -> int:
    """The server's open descriptors: the least of a few looks (its background thread opens control files
    for a moment every few hundred ms; a leak stays)."""
    counts = []
    for _ in range(10):
        counts.append(len(os.listdir(f"/proc/{pid}/fd")))
        time.sleep(0.05)
    return min(counts)


def _fd_targets(pid: int) -> list[str]:
    out = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            out.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            pass
    return sorted(out)


async def _settled_fds(pid: int, baseline: int, within: float = 3.0) -> int:
    """The fewest descriptors *pid* holds within *within* seconds (stops early at *baseline*)."""
    import anyio

    fewest = _fds(pid)
    deadline = time.monotonic() + within
    while fewest > baseline and time.monotonic() < deadline:
        await anyio.sleep(0.1)
        fewest = min(fewest, _fds(pid))
    return fewest


@pytest.mark.sqlite_only  # the leak was per thread (write gate, lock files, connection): one engine shows it
@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts descriptors in /proc")
def test_mcp_server_idle_between_calls_keeps_its_descriptor_count(fed):
    """A real `federation serve` (stdio) in phase 2 (files and database, so file locks, the write gate and
    connections are all used) idles past its worker threads' idle time five times between calls: its
    descriptor count after each cycle is what it was after the first.

    The SDK's worker threads (anyio's) end once idle for 10 s, at the next call; the server here is started
    with that set to 1 s (a ``sitecustomize`` on its path), so that a cycle is 2 s of idling, not 11."""
    import anyio

    from test_rollout import _tool, serve, status_json, wait_for

    IDLE_S = 2.0  # past the workers' idle time, 1 s in this server
    site = fed.root.parent / "short-idle-workers"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(
        "from anyio._backends._asyncio import WorkerThread\nWorkerThread.MAX_IDLE_TIME = 1\n"
        f"open({str(site / 'loaded')!r}, 'w').close()\n")
    base = unpinned_env(fed)
    path = os.pathsep.join(p for p in (str(site), base.get("PYTHONPATH", "")) if p)
    env = {**base, "PYTHONPATH": path, "FEDERATION_USE_DB": "1", "FEDERATION_PHASE": "2"}

    async def calls(session) -> None:
        await _tool(session, "send_message", recipient="alice", content="tick")
        await _tool(session, "check_inbox")
        await _tool(session, "set_context", text="idle test")
        await _tool(session, "get_context", agent="alice")

    async def scenario() -> list[int]:
        async with serve(fed, "alice", env) as session:
            await calls(session)
            me = wait_for(lambda: [p for p in status_json(fed)["fleet"] if p["agent"] == "alice"], 30,
                          what="the server in the fleet")
            pid = me[0]["pid"]
            await calls(session)
            # counted idle, past the workers' idle time after the calls: what a thread held is gone with it
            # unless it leaked; the fewest within 3 s, as a worker may be ending at that very moment, but a
            # leak stays (and grows cycle after cycle)
            await anyio.sleep(IDLE_S)
            counts, first = [await _settled_fds(pid, 0)], _fd_targets(pid)
            for _ in range(5):
                await calls(session)
                await anyio.sleep(IDLE_S)
                counts.append(await _settled_fds(pid, counts[0], within=8.0))  # generous: a loaded machine
            return counts, first, _fd_targets(pid)

    counts, first, last = anyio.run(scenario)
    assert (site / "loaded").exists(), "the server did not run with the short worker idle time"
    # a leak grows with every cycle (the old write gate added three per cycle: [14, 17, 20, 23, 26, ...]);
    # a worker thread may still hold one lock file and one connection when a cycle is counted (the SDK
    # ends idle workers on its own schedule; seen: one or two such pairs), which is bounded, not growth:
    # five cycles of a leak of even one descriptor each end at least 5 above the fewest
    assert counts[-1] - min(counts) <= 4, \
        f"descriptors grew across idle cycles: {counts}; first {first}, last {last}"


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):  # the peak: what the request cost at its worst
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


@pytest.mark.sqlite_only
@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads the server's memory in /proc")
def test_a_100_mb_request_is_refused_before_it_is_held_in_memory(fed):
    """A 100 MB send_message over stdio: a tool error naming the limit, with its request id; the server's
    peak memory grows by far less than the request; the next call works."""
    import anyio

    from test_rollout import _tool, serve, status_json, wait_for

    async def scenario() -> tuple[int, int, str]:
        async with serve(fed, "alice", {**unpinned_env(fed), "FEDERATION_USE_DB": "0"}) as session:
            await _tool(session, "send_message", recipient="bob", content="small")
            pid = wait_for(lambda: [p for p in status_json(fed)["fleet"] if p["agent"] == "alice"], 30,
                           what="the server in the fleet")[0]["pid"]
            before = _rss_kib(pid)
            result = await session.call_tool("send_message", {"recipient": "bob", "content": "x" * 100_000_000})
            assert result.is_error
            after = _rss_kib(pid)
            await _tool(session, "send_message", recipient="bob", content="still works")
            return before, after, result.content[0].text

    before, after, text = anyio.run(scenario)
    assert "request too large" in text and "limit" in text, text
    assert after - before < 50 * 1024, f"peak memory grew {after - before} KiB for a 100 MB request"
    fed.phase(1)
    assert [m["content"] for m in messaging.peek_inbox("bob")] == ["small", "still works"]


# ---------------------------------------------------------------------------
# any hostile tree

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

SECRET = "OUTSIDE-SECRET"
_AGENTS = ("ann", "bob")
#: where a hostile entry may sit, relative to the root
_SLOTS = ("nodes/ann/context_window.json", "nodes/ann/expertise.json", "nodes/ann/profile.json",
          "nodes/ann/inbox/m1.json", "nodes/ann/inbox/m2.json", "nodes/bob", "nodes/bob/inbox",
          "shared/polls.json", "shared/sessions/s1.json", "shared/sessions", "nodes/ann/inbox/weird name.json")
_json = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                                 max_size=3), max_leaves=8)
_kind = st.one_of(
    st.sampled_from(["deep", "fifo", "socket", "dir", "empty", "not-utf8", "link-file", "link-dir", "link-loop",
                     "crafted-id", "crafted-recipient", "big-number"]),
    _json.map(lambda v: ("json", v)))


def _make(path: Path, kind, outside: Path) -> None:
    import socket

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        return  # an earlier slot made a file where this one's folder would be
    if path.exists() or path.is_symlink():
        return  # an earlier slot made it (a folder holding this one)
    if isinstance(kind, tuple):
        path.write_text(json.dumps(kind[1]))
    elif kind == "deep":
        path.write_text("{\"a\": " * 3000 + "1" + "}" * 3000)
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "socket":
        sock = socket.socket(socket.AF_UNIX)
        try:
            sock.bind(str(path))
        except OSError:  # the path is too long for a socket address: a FIFO instead
            os.mkfifo(path)
        finally:
            sock.close()
    elif kind == "dir":
        path.mkdir()
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "not-utf8":
        path.write_bytes(b"\xff\xfe{\x00")
    elif kind == "link-file":
        path.symlink_to(outside / "secret.json")
    elif kind == "link-dir":
        path.symlink_to(outside)
    elif kind == "link-loop":
        path.symlink_to(path.name)
    elif kind == "crafted-id":
        path.write_text(json.dumps(message(id="../../../../outside/secret", content="crafted")))
    elif kind == "crafted-recipient":
        path.write_text(json.dumps(message(recipient="bob", content="crafted")))
    else:
        path.write_text('{"id": "x", "votes": {"a": 1e999}, "domains": [1e999]}')


def _outside(outside: Path) -> dict[str, bytes]:
    return {str(p): (p.read_bytes() if p.is_file() else b"<dir>") for p in sorted(outside.rglob("*"))}


def _reads() -> dict:
    from federation import context

    calls = {}
    for a in _AGENTS:
        calls[f"peek {a}"] = lambda a=a: messaging.peek_inbox(a)
        calls[f"check {a}"] = lambda a=a: messaging.check_inbox(a)
        calls[f"context {a}"] = lambda a=a: context.get_context(a)
        calls[f"expertise {a}"] = lambda a=a: context.get_expertise(a)
        calls[f"profile {a}"] = lambda a=a: context.get_profile(a)
    calls["polls"] = governance.list_polls
    calls["sessions"] = governance.list_sessions
    calls["agents"] = context.list_agents if hasattr(context, "list_agents") else (lambda: None)
    return calls


@pytest.mark.sqlite_only
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(tree=st.dictionaries(st.sampled_from(_SLOTS), _kind, min_size=1, max_size=5))
def test_any_hostile_tree_hangs_nothing_and_touches_nothing_outside(fed, tmp_path, tree):
    """Hostile names, links, special files, nesting and wrong types anywhere in the legacy tree: migrate,
    report and every read finish in bounded time; nothing outside the root is changed or imported; every
    problem is a typed error or a listed file."""
    import tempfile

    from federation.stores.sqlstore import forget_stores

    base = Path(tempfile.mkdtemp(dir=tmp_path))
    root, outside = base / "root", base / "outside"
    write(outside / "secret.json", message(content=SECRET, id="secret"))
    write(outside / "inbox" / "m9.json", message(content=SECRET))
    write(outside / "context_window.json", {"agent": "bob", "text": SECRET})
    write(root / "nodes" / "ann" / "inbox" / "ok.json", message(content="fine"))
    for slot, kind in sorted(tree.items()):
        _make(root / slot, kind, outside)
    before = _outside(outside)
    fed.env["FEDERATION_ROOT"] = str(root)
    fed.env["FEDERATION_DB"] = str(base / "fed.db")
    fed.phase(1)
    forget_stores()
    specials = {str(p) for p in root.rglob("*") if p.is_symlink() or not (p.is_file() or p.is_dir())}
    for phase in (1, 3):
        fed.phase(phase)
        for name, read in _reads().items():
            try:
                got = bounded(read, 30)
            except FederationError:
                continue  # typed, naming the file
            assert SECRET not in json.dumps(got, default=str), (phase, name)
        if phase == 1:
            result = bounded(lambda: migrate(settings=config.settings()), 60)
            assert result.exit_code in (0, 3), result.to_json()
            listed = {i["path"] for i in result.invalid}
            assert specials <= listed | {str(p) for p in root.rglob("*") if any(
                str(p).startswith(s + os.sep) for s in specials)}, (specials, result.invalid)
            assert bounded(lambda: build_report(settings=config.settings()), 60) is not None
            from federation.transfer.rows import read_db

            assert SECRET not in repr(read_db(fed.store()))
    assert _outside(outside) == before
