"""federation.adopt on the shapes real legacy code has (examples/plan_core): keyed caches in module
globals, load-then-save across calls, a list file per inbox, an ``__init__`` that imports a sibling
before the adoption runs.  Real processes, real files, both engines."""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
import types
from pathlib import Path

import pytest
from click.testing import CliRunner

from federation import adopt, config, rollout
from federation.cli import main as cli
from federation.transfer.report import build_report

from _procs import finish

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
sys.path.insert(0, str(EXAMPLES))

FAST = {"FEDERATION_FLAG_CHECK": "0.2", "FEDERATION_FLEET_REFRESH": "0.5", "FEDERATION_COUNTS_FLUSH": "0.5"}

N = 15  # of each kind of work per process


def _env(fed, phase: int | None) -> dict[str, str]:
    env = fed.subprocess_env(phase)
    if phase is None:  # follow the live flag
        env.pop("FEDERATION_USE_DB", None)
        env.pop("FEDERATION_PHASE", None)
    env["PYTHONPATH"] = str(EXAMPLES) + os.pathsep + env["PYTHONPATH"]
    env.update(FAST)
    return env


def _spawn(fed, code: str, *args: str, phase: int | None):
    import subprocess

    return subprocess.Popen([sys.executable, "-c", code, *args], env=_env(fed, phase),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


_SETUP = """
import plan_core.adoption
from plan_core import agent
pid = agent.create_poll("lead", "Ship it?", ["yes", "no"])
agent.start_session("s1", "Ship it", "lead")
print(pid)
"""

#: one worker: votes, posts to the shared "hub" inbox, reads it, updates its context, joins the session
_WORKER = """
import json, os, sys, time
import plan_core.adoption            # imports plan_core (whose __init__ binds agent's names) first
import plan_core
from plan_core import agent
while not os.path.exists(sys.argv[1]):   # imported: wait until every worker is, then all start at once
    time.sleep(0.001)
i, poll_id = int(sys.argv[2]), sys.argv[3]
gates = sys.argv[4:]                  # optional: (at step n, reached-file, open-file) triples
read, phases = [], {}
for j in range(%d):
    for k in range(0, len(gates), 3):
        if int(gates[k]) == j:
            open(gates[k + 1], "w").close()
            while not os.path.exists(gates[k + 2]):
                time.sleep(0.01)
    from federation import config, rollout
    phases[rollout.mode(config.settings())[0]] = phases.get(rollout.mode(config.settings())[0], 0) + 1
    plan_core.vote(poll_id, f"voter-{i}-{j}", "yes" if j %% 2 else "no")
    agent.post(f"w{i}", "hub", f"{i}-{j}")
    plan_core.join_session("s1", f"w{i}-{j}", "member")
    plan_core.update_context(f"w{i}", f"text {j}")
    read += [m["content"] for m in plan_core.read_new("hub")]
read += [m["content"] for m in plan_core.read_new("hub")]
from federation.stores import files
print(json.dumps({"read": read, "phases": phases, "outside": files.outside_writes["seen"]}))
""" % N


def _check_nothing_lost(fed, poll_id: str, reads: list[list[str]], procs: int) -> None:
    root = fed.root
    store = fed.store()
    votes_files = json.loads((root / "shared" / "polls.json").read_text())[poll_id]["votes"]
    assert len(votes_files) == procs * N and votes_files == store.load_poll(poll_id)["votes"]
    session_files = json.loads((root / "shared" / "sessions" / "s1.json").read_text())
    roles_db = store.load_session("s1")["roles"]
    assert set(session_files["roles"]) == set(roles_db) == {"lead"} | {f"w{i}-{j}" for i in range(procs)
                                                                        for j in range(N)}
    every = sorted(c for r in reads for c in r)
    assert every == sorted(f"{i}-{j}" for i in range(procs) for j in range(N))   # each read once: none lost
    inbox = json.loads((root / "nodes" / "hub" / "inbox.json").read_text())
    assert len(inbox) == procs * N and all(m.get("read") for m in inbox)       # none unread in the files
    assert store.load_inbox("hub") == []                                         # nor in the database
    for i in range(procs):
        ctx = json.loads((root / "nodes" / f"w{i}" / "context_window.json").read_text())
        assert ctx["text"] == store.load_context(f"w{i}")["text"] == f"text {N - 1}"


@pytest.mark.parametrize("phase", [1, 2, 3])
def test_concurrent_work_on_the_plan_core_loses_nothing(fed, phase, tmp_path):
    """3 processes: votes, posts, reads, context updates, session joins: nothing lost, duplicated or stale."""
    fed.phase(phase)
    poll_id = finish([_spawn(fed, _SETUP, phase=phase)])[0].strip()
    go = tmp_path / "go"
    procs = [_spawn(fed, _WORKER, str(go), str(i), poll_id, phase=phase) for i in range(3)]
    time.sleep(1.0)  # their imports
    go.touch()
    outs = [json.loads(out) for out in finish(procs)]
    reads = [o["read"] for o in outs]
    assert [o["outside"] for o in outs] == [0, 0, 0]  # the fleet alone: no write taken for an outsider's
    if phase == 1:  # the database was not written: the runbook's backfill, then the same checks
        assert CliRunner().invoke(cli, ["migrate"]).exit_code == 0
        fed.phase(2)
    _check_nothing_lost(fed, poll_id, reads, 3)
    assert build_report(settings=config.settings()).consistent


def test_the_flag_moving_1_2_3_2_1_loses_nothing(fed, tmp_path):
    """Unpinned adopted processes follow the flag 1 -> 2 -> 3 -> 2 -> 1 while working: nothing lost."""
    fed.phase(1)
    rollout.set_phase(1, settings=config.settings())
    poll_id = finish([_spawn(fed, _SETUP, phase=None)])[0].strip()
    go = tmp_path / "go"
    steps = [(3, 2), (6, 3), (8, 2), (10, 1)]
    gates = [[a for n, _ in steps for a in (str(n), str(tmp_path / f"at{n}-{i}"), str(tmp_path / f"open{n}"))]
             for i in range(2)]
    procs = [_spawn(fed, _WORKER, str(go), str(i), poll_id, *gates[i], phase=None) for i in range(2)]
    go.touch()

    def wait_for(paths):
        deadline = time.monotonic() + 120
        while not all(os.path.exists(p) for p in paths):
            assert time.monotonic() < deadline and all(p.poll() is None for p in procs), "a worker stopped"
            time.sleep(0.02)

    for n, to in steps:
        wait_for([tmp_path / f"at{n}-{i}" for i in range(2)])
        if to == 2 and rollout.mode(config.settings())[0] == 1:  # the runbook: backfill what phase 1 wrote, then step
            assert CliRunner().invoke(cli, ["migrate"]).exit_code == 0
        if to == 3:
            assert CliRunner().invoke(cli, ["sync", "--to", "db"]).exit_code == 0
        assert rollout.set_phase(to, force=True, reason="test: the flag moves under load", settings=config.settings()).applied
        fed.phase(to)
        time.sleep(0.5)                                  # every process follows within its flag check (0.2 s)
        (tmp_path / f"open{n}").touch()
    outs = [json.loads(o) for o in finish(procs)]
    assert all(set(o["phases"]) == {"1", "2", "3"} for o in outs), outs
    assert [o["outside"] for o in outs] == [0, 0]  # migrate and sync wrote too: announced, stamped
    # back in phase 1 the files alone are written: the runbook's sync brings the database level for the checks
    assert CliRunner().invoke(cli, ["sync", "--to", "db"]).exit_code == 0
    fed.phase(2)
    _check_nothing_lost(fed, poll_id, [o["read"] for o in outs], 2)


@pytest.fixture
def plan(fed):
    """plan_core adopted in this process on the test's root (withdrawn afterwards)."""
    import plan_core.adoption as adoption

    state = importlib.import_module("plan_core.state")
    agent = importlib.import_module("plan_core.agent")
    adopt.install(state, adoption.STATE)  # idempotent: the hook installed it at the first import
    adopt.install(agent, adoption.AGENT)
    state.ROOT = fed.root
    state.CONTEXT.clear(), state.SESSIONS.clear()
    state.active_polls = {}
    yield types.SimpleNamespace(state=state, agent=agent)
    adopt.uninstall(agent)
    adopt.uninstall(state)
    assert agent.save_polls is state.save_polls and not hasattr(state.save_polls, "__wrapped__")


def test_phase_3_keyed_cache_write_reaches_both_sides(fed, plan):
    """The issue's case: in phase 3 load_context fills CONTEXT from the database; the save writes the change."""
    fed.phase(2)
    plan.agent.update_context("node01", "OLD TEXT")
    fed.phase(3)
    plan.agent.update_context("node01", "NEW TEXT")
    on_disk = json.loads((fed.root / "nodes" / "node01" / "context_window.json").read_text())
    assert on_disk["text"] == fed.store().load_context("node01")["text"] == "NEW TEXT"
    assert plan.state.CONTEXT["node01"]["text"] == "NEW TEXT"
    assert build_report(settings=config.settings()).consistent


@pytest.mark.sqlite_only
def test_aliases_bound_before_install_are_patched(fed, plan):
    """plan_core's __init__ binds agent's names before the adoption: install patched them, uninstall restores."""
    import plan_core

    assert plan.agent.save_polls is plan.state.save_polls                 # the wrapper, not the plain function
    assert hasattr(plan.agent.save_polls, "__wrapped__") and hasattr(plan_core.join_session, "__wrapped__")


@pytest.mark.sqlite_only
def test_a_declaration_of_the_wrong_shape_is_refused_at_install(fed, tmp_path, monkeypatch):
    """A list-saving function declared as one message (and the reverse) is refused naming function and parameter."""
    (tmp_path / "shaped_core.py").write_text('''
import json
from pathlib import Path
ROOT = Path(".")
def load_inbox(agent):
    path = ROOT / "nodes" / agent / "inbox.json"
    return json.loads(path.read_text()) if path.exists() else []
def save_inbox(agent, msgs):
    (ROOT / "nodes" / agent / "inbox.json").write_text(json.dumps(msgs))
def send(recipient, msg):
    msg["recipient"] = recipient
    (ROOT / "nodes" / recipient / "inbox" / (msg["id"] + ".json")).write_text(json.dumps(msg))
def save_batch(recipient, batch):
    for m in batch:
        m["seen"] = False
    Path("x").write_text(json.dumps(batch))
''')
    monkeypatch.syspath_prepend(str(tmp_path))
    mod = importlib.import_module("shaped_core")
    original = mod.save_inbox
    cases = [
        ({"save_inbox": adopt.Save("message", key="agent")},
         r"shaped_core\.save_inbox: .*list file 'inbox\.json'.*shape='list'"),
        ({"load_inbox": adopt.Load("inbox", key="agent")}, r"shaped_core\.load_inbox: .*list file"),
        ({"save_batch": adopt.Save("message", key="recipient")},
         r"shaped_core\.save_batch: Save\('message'\) declares one record, but save_batch writes a list "
         r"\(parameter 'batch'\)"),
        ({"send": adopt.Save("inbox", key="recipient", shape="list")},
         r"shaped_core\.send: .*writes one record \(parameter 'msg'\)"),
        ({"load_inbox": adopt.Claim("inbox", key="agent", shape="list")}, r"Claim on a list-file inbox"),
        ({"load_inbox": adopt.Load("inbox", key="agent", shape="lists")}, r"shape='lists'"),
        ({"load_inbox": adopt.Load("inbox", key="agent", shape="list", into="ROOT")},
         r"into='ROOT': a keyed cache is a dict global"),
    ]
    for declarations, message in cases:
        with pytest.raises(adopt.DeclarationError, match=message):
            adopt.install(mod, {"save_inbox": adopt.Save("inbox", key="agent", shape="list"), **declarations})
        assert mod.save_inbox is original and not adopt.installed(mod)
    adopt.install(mod, {"load_inbox": adopt.Load("inbox", key="agent", shape="list"),
                        "save_inbox": adopt.Save("inbox", key="agent", shape="list"),
                        "send": adopt.Save("message", key="recipient")})   # the right shapes: accepted
    adopt.uninstall(mod)
    sys.modules.pop("shaped_core", None)


def test_a_list_inbox_written_in_phase_1_is_read_once_in_phase_3(fed, plan):
    """Messages only the list file holds (phase 1, never migrated) reach the database's inbox: none lost."""
    fed.phase(1)
    ids = [plan.agent.post("alice", "bob", f"m{i}") for i in range(3)]
    assert fed.store().load_inbox("bob") == []
    fed.phase(3)
    got = plan.agent.read_new("bob")
    assert sorted(m["id"] for m in got) == sorted(ids)
    assert fed.store().load_inbox("bob") == [] and plan.agent.read_new("bob") == []
    listed = json.loads((fed.root / "nodes" / "bob" / "inbox.json").read_text())
    assert sorted(m["id"] for m in listed) == sorted(ids) and all(m["read"] for m in listed)


def test_a_writer_outside_the_fleet_is_shown_and_refused(fed, plan, tmp_path):
    """An unadopted process rewriting polls.json in place: the adopted reader counts the torn document,
    `rollout status` shows it, and the steps 1 -> 2 and 2 -> 3 are refused by unannounced_writers."""
    fed.phase(1)
    rollout.set_phase(1, settings=config.settings())
    plan.agent.create_poll("lead", "Torn?", ["yes", "no"])
    path = fed.root / "shared" / "polls.json"
    done = tmp_path / "done"
    writer = _spawn(fed, f"""
import os, time
from pathlib import Path
p = Path({str(path)!r}); text = p.read_text()
while not os.path.exists({str(done)!r}):
    p.write_text("")          # a legacy writer: truncate in place...
    time.sleep(0.02)
    p.write_text(text)        # ...then write
    time.sleep(0.02)
""", phase=1)
    from federation.stores import files as _files

    before = sum(_files.torn_reads.values())
    try:
        deadline = time.monotonic() + 60
        while sum(_files.torn_reads.values()) == before:
            assert time.monotonic() < deadline, "the adopted reader never met the writer's torn file"
            plan.state.load_polls()
    finally:
        done.touch()
        finish([writer])
    rollout.RUNTIME.tick(announce_now=True)
    status = json.loads(CliRunner().invoke(cli, ["rollout", "status", "--json"]).output)
    [me] = [p for p in status["fleet"] if p["pid"] == os.getpid()]
    assert me.get("torn_documents", {}).get("shared/polls.json", 0) >= 1 and me.get("torn_at"), me
    text = CliRunner().invoke(cli, ["rollout", "status"]).output
    assert "half-written" in text and "shared/polls.json (" in text
    from federation.operations.doctor import doctor

    [check] = [c for c in doctor(settings=config.settings()).checks if c.name == "unannounced_writers"]
    assert not check.ok and "shared/polls.json" in check.detail
    result = rollout.set_phase(2, settings=config.settings())
    [refused] = [g for g in result.refused if g["name"] == "unannounced_writers"] or [result.refused]
    assert "shared/polls.json" in refused["detail"] and not result.applied
    assert CliRunner().invoke(cli, ["migrate"]).exit_code == 0
    assert rollout.set_phase(2, force=True, reason="test", settings=config.settings()).applied
    assert [g for g in rollout.set_phase(3, settings=config.settings()).refused if g["name"] == "unannounced_writers"]
    rollout.RUNTIME.torn_at = None                       # it stopped (the window passed): the guard passes
    rollout.RUNTIME.outside_at = None                    # (its whole rewrites were counted as outside ones too)
    rollout.RUNTIME.tick(announce_now=True)
    assert [g for g in rollout.guards(3, settings=config.settings()) if g["name"] == "unannounced_writers"][0]["ok"]


_ADOPTED_VOTER = """
import sys
import plan_core.adoption
from plan_core import agent
from federation.stores import files
for j in range(20):
    agent.vote(sys.argv[1], f"adopted-{j}", "yes")
print(files.outside_writes["seen"])
"""

#: a plain legacy process, never adopted: rewrites polls.json whole and clean (never torn for a reader when
#: ``atomic``: a temp file renamed over it; ``in_place``: open("w").write, as the plan's code does)
_OUTSIDE_WRITER = """
import json, os, sys, time
path, done, how = sys.argv[1], sys.argv[2], sys.argv[3]
j = 0
while not os.path.exists(done):
    polls = json.loads(open(path).read())
    for poll in polls.values():
        poll["votes"][f"outsider-{j}"] = "no"
    text = json.dumps(polls, indent=2)
    if how == "atomic":
        with open(path + ".tmp", "w") as fh:
            fh.write(text)
        os.replace(path + ".tmp", path)
    else:
        with open(path, "w") as fh:
            fh.write(text)
    j += 1
    time.sleep(0.02)
"""


@pytest.mark.parametrize("how", ["atomic", "in_place"])
def test_a_clean_writer_outside_the_fleet_is_counted_shown_and_refused(fed, plan, tmp_path, how):
    """The fleet alone (adopted processes, the federation's own writes) counts no outside write; a plain legacy
    process rewriting polls.json whole beside them in phase 2 is counted per document, shown by `rollout
    status` and doctor, and the steps 1 -> 2 and 2 -> 3 are refused by unannounced_writers until it stops."""
    from federation import governance
    from federation.operations.doctor import doctor
    from federation.stores import files as _files

    fed.phase(2)
    assert rollout.set_phase(2, force=True, reason="test", settings=config.settings()).applied
    poll_id = plan.agent.create_poll("lead", "Outside?", ["yes", "no"])
    before = _files.outside_writes["seen"]
    voter = _spawn(fed, _ADOPTED_VOTER, poll_id, phase=2)       # adopted, another process
    for j in range(20):                                       # adopted here, and the federation's own code
        plan.agent.vote(poll_id, f"here-{j}", "no")
        governance.vote(poll_id, f"api-{j}", "yes")
        plan.state.load_polls()
    assert finish([voter])[0].strip() == "0"
    assert _files.outside_writes["seen"] == before, dict(_files.outside_files)  # no false positive
    path = fed.root / "shared" / "polls.json"
    done = tmp_path / "done"
    writer = _spawn(fed, _OUTSIDE_WRITER, str(path), str(done), how, phase=2)
    try:
        deadline = time.monotonic() + 60
        while _files.outside_writes["seen"] == before:
            assert time.monotonic() < deadline and writer.poll() is None, "the outside writer was never seen"
            plan.state.load_polls()
            time.sleep(0.01)
    finally:
        done.touch()
        finish([writer])
    assert _files.outside_files.get("shared/polls.json", 0) >= 1
    rollout.RUNTIME.tick(announce_now=True)
    status = json.loads(CliRunner().invoke(cli, ["rollout", "status", "--json"]).output)
    [me] = [p for p in status["fleet"] if p["pid"] == os.getpid()]
    assert me["outside_documents"]["shared/polls.json"] >= 1 and me.get("outside_at"), me
    text = CliRunner().invoke(cli, ["rollout", "status"]).output
    assert "no process of the fleet made" in text and "shared/polls.json (" in text
    [check] = [c for c in doctor(settings=config.settings()).checks if c.name == "unannounced_writers"]
    assert not check.ok and "shared/polls.json" in check.detail
    assert [g for g in rollout.set_phase(3, settings=config.settings()).refused if g["name"] == "unannounced_writers"]
    assert rollout.set_phase(1, force=True, reason="test", settings=config.settings()).applied
    [refused] = [g for g in rollout.set_phase(2, settings=config.settings()).refused if g["name"] == "unannounced_writers"]
    assert "shared/polls.json" in refused["detail"]
    rollout.RUNTIME.outside_at = rollout.RUNTIME.torn_at = None  # it stopped (the window passed): passes
    rollout.RUNTIME.tick(announce_now=True)
    assert [g for g in rollout.guards(2, settings=config.settings()) if g["name"] == "unannounced_writers"][0]["ok"]


@pytest.mark.parametrize("phase", [2, 3])
def test_the_plan_cores_loads_agree_with_the_database(fed, plan, phase):
    """After posts, reads, joins and context updates, every adopted load compares equal: no mismatch counted."""
    import structlog

    fed.phase(phase)
    plan.agent.start_session("s1", "Ship it", "lead")
    plan.agent.join_session("s1", "bob", "reviewer")
    plan.agent.update_context("bob", "reviewing")
    plan.agent.post("alice", "bob", "one")
    plan.agent.read_new("bob")
    plan.agent.post("alice", "bob", "two")
    with structlog.testing.capture_logs() as logs:
        plan.state.load_session("s1"), plan.state.load_context("bob"), plan.state.load_inbox("bob")
    assert [e for e in logs if e["event"] in ("shadow_mismatch", "shadow_error")] == []
    assert [m["content"] for m in fed.store().load_inbox("bob")] == ["two"]
    assert set(fed.store().load_session("s1")["roles"]) == {"lead", "bob"}


@pytest.mark.sqlite_only
def test_an_alias_that_cannot_be_patched_is_refused_naming_it(fed, tmp_path, monkeypatch):
    """A module of the package that refuses the patch: install fails naming module and name; nothing wrapped."""
    pkg = tmp_path / "aliaspkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from . import reader\n")
    (pkg / "state.py").write_text("active_polls = {}\ndef load_polls():\n    pass\ndef save_polls():\n    pass\n")
    (pkg / "reader.py").write_text('''
import sys, types
from .state import save_polls
class _Frozen(types.ModuleType):
    def __setattr__(self, name, value):
        raise AttributeError(f"{name} is read-only here")
sys.modules[__name__].__class__ = _Frozen
''')
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.import_module("aliaspkg")
    state = sys.modules["aliaspkg.state"]
    original = state.save_polls
    try:
        with pytest.raises(adopt.DeclarationError, match=r"aliaspkg\.reader\.save_polls \(AttributeError"):
            adopt.install(state, {"load_polls": adopt.Load("polls", into="active_polls"),
                                  "save_polls": adopt.Save("polls", source="active_polls")})
        assert state.save_polls is original and not adopt.installed(state)
        assert sys.modules["aliaspkg.reader"].save_polls is original
    finally:
        for name in [n for n in sys.modules if n == "aliaspkg" or n.startswith("aliaspkg.")]:
            sys.modules.pop(name)


def test_migrate_report_and_sync_know_list_file_inboxes(fed, plan):
    """migrate imports a list inbox's unread messages; report compares them; sync --to db keeps them unread
    (it used to mark them read: lost); sync --to files marks a database claim read in the list, in place."""
    fed.phase(1)
    first = plan.agent.post("alice", "bob", "phase 1")
    assert CliRunner().invoke(cli, ["migrate"]).exit_code == 0
    assert [m["id"] for m in fed.store().load_inbox("bob")] == [first]       # imported, unread
    fed.phase(2)
    second = plan.agent.post("alice", "bob", "phase 2")
    assert build_report(settings=config.settings()).consistent
    assert CliRunner().invoke(cli, ["sync", "--to", "db"]).exit_code == 0
    assert [m["id"] for m in fed.store().load_inbox("bob")] == [first, second]
    fed.phase(3)
    fed.store().claim_inbox("bob", ids=[first])                              # claimed behind the list's back
    assert not build_report(settings=config.settings()).consistent
    assert CliRunner().invoke(cli, ["sync", "--to", "files"]).exit_code == 0
    listed = json.loads((fed.root / "nodes" / "bob" / "inbox.json").read_text())
    assert [(m["id"], bool(m.get("read"))) for m in listed] == [(first, True), (second, False)]
    assert build_report(settings=config.settings()).consistent
    assert [m["content"] for m in plan.agent.read_new("bob")] == ["phase 2"]
