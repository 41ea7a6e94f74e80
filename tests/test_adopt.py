"""federation.adopt: the shim adopted on a core in the migration plan's own style (examples/seed_core)."""

from __future__ import annotations

import importlib
import json
import os
import sys
import threading
import time
from pathlib import Path

import pytest
import structlog
from click.testing import CliRunner

from federation.stores import files as _files
from federation import adopt, config, rollout
from federation.cli import main as cli
from federation.errors import StorageError
from federation.transfer.report import build_report

from _procs import WAIT_FOR_GO, finish

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
sys.path.insert(0, str(EXAMPLES))

from seed_core.adoption import DECLARATIONS  # noqa: E402  (registers the post-import hook)

#: fast control-plane timings for processes that follow the live flag
FAST = {"FEDERATION_FLAG_CHECK": "0.2", "FEDERATION_FLEET_REFRESH": "0.5", "FEDERATION_COUNTS_FLUSH": "0.5"}


def _events(logs, name):
    return [e for e in logs if e["event"] == name]


@pytest.fixture(autouse=True)
def _process_counts_restored():
    """This process's torn-file counts are announced in the fleet: leave them as found for other test modules."""
    saved = dict(_files.torn_reads)
    yield
    _files.torn_reads.update(saved)


@pytest.fixture
def seed(fed):
    """The example core, adopted in this process, on the test's federation root (withdrawn afterwards)."""
    module = importlib.import_module("seed_core.core")
    adopt.install(module, DECLARATIONS)  # idempotent: the hook installed it at import
    module.ROOT = fed.root
    module.POLLS_FILE = fed.root / "shared" / "polls.json"
    module.active_polls = {}
    yield module
    adopt.uninstall(module)  # no adopted module left announced: other tests step to phase 4


def _env(fed, phase: int | None, **extra: str) -> dict[str, str]:
    env = fed.subprocess_env(phase)
    if phase is None:  # follow the live flag
        env.pop("FEDERATION_USE_DB", None)
        env.pop("FEDERATION_PHASE", None)
    env["PYTHONPATH"] = str(EXAMPLES) + os.pathsep + env["PYTHONPATH"]
    env.update(extra)
    return env


def _spawn(fed, code: str, *args: str, phase: int | None, **extra: str):
    import subprocess

    return subprocess.Popen([sys.executable, "-c", code, *args], env=_env(fed, phase, **extra),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _run(fed, code: str, *args: str, phase: int | None, **extra: str) -> str:
    return finish([_spawn(fed, code, *args, phase=phase, **extra)], timeout=120)[0]


_CREATE = """
import sys
import seed_core.adoption
from seed_core import core
print(core.create_poll("lead", "Ship it?", ["yes", "no"]))
"""

_VOTER = WAIT_FOR_GO + """
import json
import seed_core.adoption  # the one call: adopt.install_when_imported("seed_core.core", ...)
from seed_core import core
from federation import config, rollout
i, poll_id = int(sys.argv[2]), sys.argv[3]
gates = sys.argv[4:]  # optional: (after vote n, wait for file) pairs
seen = {}
for j in range(50):
    for k in range(0, len(gates), 3):
        if int(gates[k]) == j:
            open(gates[k + 1], "w").close()           # reached the gate
            while not os.path.exists(gates[k + 2]):   # wait for the test to open it
                time.sleep(0.01)
    phase = rollout.mode(config.settings())[0]
    seen[phase] = seen.get(phase, 0) + 1
    core.vote(poll_id, f"voter-{i}-{j}", "yes" if j % 2 else "no")  # load_polls(); mutate; save_polls()
print(json.dumps(seen))
"""


def _both_sides(fed, poll_id: str) -> tuple[dict, dict]:
    files = json.loads((fed.root / "shared" / "polls.json").read_text())[poll_id]["votes"]
    return files, fed.store().load_poll(poll_id)["votes"]


@pytest.mark.parametrize("phase", [2, 3])
def test_four_processes_keep_every_vote_on_both_sides(fed, phase, tmp_path):
    """4 processes x 50 votes through the example's load_polls(); mutate; save_polls() keep 200/200 on both sides."""
    fed.phase(phase)
    poll_id = _run(fed, _CREATE, phase=phase).strip()
    go = tmp_path / "go"
    procs = [_spawn(fed, _VOTER, str(go), str(i), poll_id, phase=phase) for i in range(4)]
    time.sleep(0.3)
    go.touch()
    finish(procs)
    files, db = _both_sides(fed, poll_id)
    assert len(files) == 200 and files == db
    assert sorted(files.values()).count("yes") == 100
    assert build_report(settings=config.settings()).consistent  # `federation report` agrees


def test_votes_while_the_live_flag_moves_1_2_3(fed, tmp_path):
    """Unpinned adopted processes follow the flag 1 -> 2 -> 3 while voting; both sides end with all 200 votes."""
    fed.phase(1)
    rollout.set_phase(1, settings=config.settings())
    poll_id = _run(fed, _CREATE, phase=None, **FAST).strip()
    assert CliRunner().invoke(cli, ["migrate"]).exit_code == 0  # the runbook: backfill before phase 2
    go = tmp_path / "go"
    gates = []
    for i in range(4):
        gates.append([str(tmp_path / f"at2-{i}"), str(tmp_path / "open2"), str(tmp_path / f"at3-{i}"),
                      str(tmp_path / "open3")])
    procs = [_spawn(fed, _VOTER, str(go), str(i), poll_id, "10", g[0], g[1], "30", g[2], g[3], phase=None, **FAST)
             for i, g in enumerate(gates)]
    go.touch()

    def wait_for(paths):
        deadline = time.monotonic() + 120
        while not all(os.path.exists(p) for p in paths):
            assert time.monotonic() < deadline, "the voters did not reach the gate"
            time.sleep(0.02)

    wait_for([g[0] for g in gates])
    assert rollout.set_phase(2, settings=config.settings()).applied
    (tmp_path / "open2").touch()                        # they vote on while following the flag (within 0.2 s)
    time.sleep(1.0)                                     # every process follows within its flag check (0.2 s)
    wait_for([g[2] for g in gates])
    assert CliRunner().invoke(cli, ["sync", "--to", "db"]).exit_code == 0  # what phase 1 wrote to the files only
    (tmp_path / "open3").touch()
    assert rollout.set_phase(3, force=True, reason="test: the step itself is tested below", settings=config.settings()).applied
    seen = [json.loads(out) for out in finish(procs)]
    files, db = _both_sides(fed, poll_id)
    assert len(files) == 200 and files == db
    assert all(s.get("1", 0) >= 10 for s in seen), seen  # the first ten of each (at least): phase 1
    assert all(s.get("2", 0) >= 1 for s in seen), seen   # then phase 2 (and 3 once it reached them)
    assert build_report(settings=config.settings()).consistent


def test_guarded_step_2_to_3_passes_on_the_adopted_processes_counts(fed, tmp_path):
    """In phase 2 by the flag, the adopted voters' own shadow comparisons (flushed at exit) let `rollout set 3` pass."""
    fed.phase(2)
    rollout.set_phase(2, settings=config.settings())
    # the counts are kept per second and a window starts at the first whole second after the step: on a
    # fast machine the voters finished inside the step's own second and their comparisons were not counted
    time.sleep(1.05 - time.time() % 1)
    poll_id = _run(fed, _CREATE, phase=None, **FAST).strip()
    go = tmp_path / "go"
    procs = [_spawn(fed, _VOTER, str(go), str(i), poll_id, phase=None, **FAST) for i in range(4)]
    time.sleep(0.3)
    go.touch()
    finish(procs)
    counts = rollout.consistency(settings=config.settings())
    assert counts["polls"]["comparisons"] >= 200 and counts["polls"]["mismatches"] == 0
    result = rollout.set_phase(3, min_comparisons=200, settings=config.settings())
    assert result.applied and not result.forced, result.refused
    assert {g["name"] for g in result.guards} >= {"backfilled", "report_consistent", "consistency_rate",
                                                  "enough_comparisons"}


def test_phase_3_load_fills_the_module_global_from_the_database(fed, seed):
    """Phase 3: load_polls() puts the database's polls into active_polls; the files differ -> a counted mismatch."""
    fed.phase(3)
    poll_id = seed.create_poll("lead", "Which side?", ["db", "files"])
    seed.vote(poll_id, "bob", "db")
    data = json.loads(seed.POLLS_FILE.read_text())
    data[poll_id]["votes"]["bob"] = "files"
    seed.POLLS_FILE.write_text(json.dumps(data))       # a hand edit behind the shim
    seed.active_polls = {}
    with structlog.testing.capture_logs() as logs:
        assert seed.load_polls() is not None
    assert seed.active_polls[poll_id]["votes"] == {"bob": "db"}
    [event] = _events(logs, "shadow_mismatch")
    assert (event["entity"], event["key"], event["op"]) == ("polls", poll_id, "load_polls")
    assert event["diff"] == [{"field": "votes.bob", "db": "db", "files": "files"}]
    fed.phase(2)
    seed.load_polls()
    assert seed.active_polls[poll_id]["votes"] == {"bob": "files"}  # phase 2 serves the files


@pytest.mark.parametrize("phase", [2, 3])
def test_inbox_and_context_keep_the_adopters_ids_and_timestamps(fed, seed, phase):
    """send/check_inbox and save_context dual-write the adopter's own ids and naive timestamps exactly."""
    fed.phase(phase)
    mid = seed.send("alice", "bob", "hello")
    written = json.loads((fed.root / "nodes" / "bob" / "inbox" / f"{mid}.json").read_text())
    row = fed.store().load_inbox("bob")
    assert row == [written]                               # id "msg_<ms>_<hex>", naive timestamp: as written
    assert "+" not in written["timestamp"] and not written["timestamp"].endswith("Z")
    claimed = seed.check_inbox("bob")
    assert claimed == [written]
    assert fed.store().load_inbox("bob") == [] and not list((fed.root / "nodes" / "bob" / "inbox").glob("*.json"))
    seed.save_context("bob", "working on it")             # calls its own (wrapped) load_context: re-entrant lock
    on_disk = json.loads((fed.root / "nodes" / "bob" / "context_window.json").read_text())
    assert fed.store().load_context("bob") == on_disk
    assert seed.load_context("bob") == on_disk
    assert build_report(settings=config.settings()).consistent


def _refuse_writes(fed, table: str) -> None:
    """Make the database refuse every insert and update of *table* (a trigger): a real failing write."""
    db = fed.store().db
    if fed.engine == "postgresql":
        db.execute("CREATE OR REPLACE FUNCTION refuse_write() RETURNS trigger AS $$ BEGIN "
                   "RAISE EXCEPTION 'refused by the test' USING ERRCODE = 'check_violation'; END $$ LANGUAGE plpgsql")
        db.execute(f"CREATE TRIGGER refuse_{table} BEFORE INSERT OR UPDATE ON {table} FOR EACH ROW "
                   "EXECUTE FUNCTION refuse_write()")
    else:
        for op in ("INSERT", "UPDATE"):
            db.execute(f"CREATE TRIGGER refuse_{table}_{op.lower()} BEFORE {op} ON {table} "
                       "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END")


def test_database_decides_a_record_the_function_builds(fed, seed):
    """Phase 3: when the database refuses what save_context/send wrote, the files are put back and the call fails."""
    fed.phase(3)
    seed.save_context("bob", "before")
    path = fed.root / "nodes" / "bob" / "context_window.json"
    before = path.read_bytes()
    _refuse_writes(fed, "context")
    _refuse_writes(fed, "messages")
    with pytest.raises(StorageError, match="refused by the test"):
        seed.save_context("bob", "after")
    assert path.read_bytes() == before                  # put back as it was
    with pytest.raises(StorageError, match="refused by the test"):
        seed.send("alice", "carol", "lost?")
    assert not list((fed.root / "nodes" / "carol" / "inbox").glob("*.json"))
    assert fed.store().load_context("bob")["text"] == "before"
    fed.phase(2)                                        # phase 2: the files decide, the database is the shadow
    with structlog.testing.capture_logs() as logs:
        seed.save_context("bob", "after")
    assert json.loads(path.read_text())["text"] == "after"
    [event] = _events(logs, "shadow_error")
    assert event["side"] == "db" and event["op"] == "save_context"


def test_phase_3_claim_leaves_what_the_database_did_not_claim(fed, seed):
    """Phase 3: a message only the files hold is not lost by check_inbox: it stays in the files (a mismatch)."""
    fed.phase(3)
    mid = seed.send("alice", "bob", "both sides")
    stray = fed.root / "nodes" / "bob" / "inbox" / "stray-1.json"
    stray.write_text(json.dumps({"id": "stray-1", "sender": "x", "recipient": "bob", "content": "files only",
                                 "timestamp": "2026-01-01T00:00:00"}))
    with structlog.testing.capture_logs() as logs:
        got = seed.check_inbox("bob")
    assert [m["id"] for m in got] == [mid]
    assert stray.exists()
    assert [e["key"] for e in _events(logs, "shadow_mismatch")] == ["stray-1"]


_ONE_VOTE = """
import sys
import seed_core.adoption
from seed_core import core
core.vote(sys.argv[1], sys.argv[2], sys.argv[3])
"""


@pytest.mark.sqlite_only
def test_saves_after_a_merge_keep_what_another_process_wrote(fed, seed):
    """Phase 1: this process loads the polls; another adopted process votes; this one votes and saves (a
    merge: both votes), then votes again and saves without loading: the other process's vote is still in
    the file (the second save is merged against what the caller holds, not written as it is)."""
    fed.phase(1)
    poll_id = seed.create_poll("lead", "Ship it?", ["yes", "no"])
    seed.load_polls()
    _run(fed, _ONE_VOTE, poll_id, "other", "no", phase=1)
    seed.active_polls[poll_id]["votes"]["me"] = "yes"
    seed.save_polls()
    seed.active_polls[poll_id]["votes"]["me-again"] = "yes"
    seed.save_polls()
    votes = json.loads(seed.POLLS_FILE.read_text())[poll_id]["votes"]
    assert votes == {"other": "no", "me": "yes", "me-again": "yes"}


@pytest.mark.sqlite_only
def test_a_declaration_that_does_not_fit_is_refused_at_install(fed, tmp_path, monkeypatch):
    """Unknown entity, key not a parameter, into/source not a module global: refused naming function and parameter."""
    import types

    mod = types.ModuleType("refused_core")
    mod.active_polls = {}
    mod.load_polls = lambda: None
    mod.save_polls = lambda: None
    mod.load_context = lambda agent: None
    bad = [
        ({"load_polls": adopt.Load("pols", into="active_polls")}, r"refused_core\.load_polls: unknown entity 'pols'"),
        ({"load_context": adopt.Load("context", key="name")},
         r"refused_core\.load_context: key='name' is not a parameter of load_context"),
        ({"load_polls": adopt.Load("polls", into="polls")},
         r"refused_core\.load_polls: into='polls' is not a module global"),
        ({"save_polls": adopt.Save("polls", source="load_polls")},
         r"refused_core\.save_polls: source='load_polls' is not a module global"),
        ({"load_context": adopt.Load("context")}, r"refused_core\.load_context: .* needs key="),
        ({"save_polls": adopt.Claim("polls")}, r"refused_core\.save_polls: Claim\('polls'\)"),
        ({"save_everything": adopt.Save("polls", source="active_polls")}, r"no function 'save_everything'"),
    ]
    original = mod.load_polls
    for declarations, message in bad:
        with pytest.raises(adopt.DeclarationError, match=message):
            adopt.install(mod, {"load_polls": adopt.Load("polls", into="active_polls"), **declarations})
        assert mod.load_polls is original and not adopt.installed(mod)  # nothing wrapped


@pytest.mark.sqlite_only
def test_the_adopted_process_is_in_rollout_status_and_blocks_phase_4(fed, tmp_path):
    """A live adopted process is announced with its module; `rollout set 4` is refused naming it."""
    ready, done = tmp_path / "ready", tmp_path / "done"
    code = """
import os, sys, time
import seed_core.adoption
from seed_core import core
core.load_polls()
open(sys.argv[1], "w").close()
while not os.path.exists(sys.argv[2]):
    time.sleep(0.02)
"""
    proc = _spawn(fed, code, str(ready), str(done), phase=None, **FAST)
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert time.monotonic() < deadline and proc.poll() is None, "the adopted process did not start"
            time.sleep(0.02)
        deadline = time.monotonic() + 30
        while not [p for p in rollout.fleet(settings=config.settings()) if p["pid"] == proc.pid and p.get("adopted")]:
            assert time.monotonic() < deadline, "the adopted process was not announced"
            time.sleep(0.1)
        status = json.loads(CliRunner().invoke(cli, ["rollout", "status", "--json"]).output)
        [entry] = [p for p in status["fleet"] if p["pid"] == proc.pid]
        assert entry["adopted"] == ["seed_core.core"] and entry["alive"]
        text = CliRunner().invoke(cli, ["rollout", "status"]).output
        assert f"{proc.pid} runs seed_core.core through federation.adopt" in text
        result = rollout.set_phase(4, settings=config.settings())
        [refused] = [g for g in result.refused if g["name"] == "adopted_code"]
        assert str(proc.pid) in refused["detail"] and "seed_core.core" in refused["detail"]
        assert "federation.*" in refused["fix"]
    finally:
        done.touch()
        finish([proc])


@pytest.mark.sqlite_only
def test_a_torn_file_is_reread_not_fatal(fed, monkeypatch):
    """A polls.json caught empty mid-write by a non-atomic writer is re-read until it parses, and counted."""
    from federation import governance

    fed.phase(1)
    pid = governance.create_poll("lead", "Torn?", ["yes", "no"])
    path = fed.root / "shared" / "polls.json"
    content = path.read_text()
    path.write_text("")                                # the writer has truncated it...
    seen_torn = threading.Event()
    parse = _files.parse_json_bytes

    def watched(raw: bytes):                           # the real parser, telling the writer when it failed
        try:
            return parse(raw)
        except ValueError:
            seen_torn.set()
            raise

    monkeypatch.setattr(_files, "parse_json_bytes", watched)
    writer = threading.Thread(target=lambda: (seen_torn.wait(60), path.write_text(content)))
    writer.start()                                     # ...and finishes writing once a reader has seen it torn
    before = dict(_files.torn_reads)
    assert governance.get_poll(pid)["question"] == "Torn?"
    writer.join()
    assert _files.torn_reads["recovered"] == before["recovered"] + 1


@pytest.mark.sqlite_only
def test_project_reads_survive_a_legacy_writer_outside_the_shim(fed, tmp_path):
    """The project's phase-1 reads beside an unadopted process rewriting polls.json in place never fail."""
    from federation import governance

    fed.phase(1)
    pid = governance.create_poll("lead", "Torn?", ["yes", "no"])
    path = fed.root / "shared" / "polls.json"
    doc = json.loads(path.read_text())
    doc[pid]["votes"] = {f"v{i}": "yes" for i in range(3000)}  # big enough to be caught mid-write
    path.write_text(json.dumps(doc))
    done = tmp_path / "done"
    code = f"""
import os, sys, time
from pathlib import Path
p, text = Path({str(path)!r}), Path({str(path)!r}).read_text()
while not os.path.exists({str(done)!r}):
    p.write_text(text)  # in place: truncate, then write (a legacy voter: a vote every 10 ms)
    time.sleep(0.01)
"""
    import subprocess

    writer = subprocess.Popen([sys.executable, "-c", code])
    before = dict(_files.torn_reads)
    try:
        for _ in range(200):
            assert len(governance.get_poll(pid)["votes"]) == 3000
    finally:
        done.touch()
        writer.wait(timeout=30)
    assert _files.torn_reads["unreadable"] == before["unreadable"]
    recovered = _files.torn_reads["recovered"] - before["recovered"]
    print("torn files re-read:", recovered)
    if recovered:  # this process says so in the fleet, and `rollout status` warns of a writer outside the shim
        rollout.RUNTIME.tick(announce_now=True)
        [me] = [p for p in rollout.fleet(settings=config.settings()) if p["pid"] == os.getpid()]
        assert me["torn_reads"] >= recovered
        assert "half-written" in CliRunner().invoke(cli, ["rollout", "status"]).output


_OTHER_CORE = '''
import json
from pathlib import Path

ROOT = Path(".")


def _write(path, doc):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))


def _read(path):
    return json.loads(path.read_text()) if path.exists() else None


def load_profile(agent):
    return _read(ROOT / "nodes" / agent / "profile.json")


def save_profile(agent, role, traits):
    _write(ROOT / "nodes" / agent / "profile.json",
           {"agent": agent, "default_role": role, "traits": traits, "updated_at": "2026-01-02T03:04:05"})


def load_expertise(agent):
    return _read(ROOT / "nodes" / agent / "expertise.json")


def set_expertise(agent, domains):
    _write(ROOT / "nodes" / agent / "expertise.json",
           {"agent": agent, "domains": domains, "updated_at": "2026-01-02T03:04:05"})


def load_session(session_id):
    return _read(ROOT / "shared" / "sessions" / f"{session_id}.json")


def start_session(session_id, title, lead):
    _write(ROOT / "shared" / "sessions" / f"{session_id}.json",
           {"id": session_id, "title": title, "description": None, "lead": lead, "phase": "planning",
            "created_at": "2026-01-02T03:04:05", "updated_at": None,
            "roles": {lead: {"role": "lead", "subtask": None, "assigned_at": "2026-01-02T03:04:05"}},
            "artifacts": {}, "reviews": {}})
'''


@pytest.mark.parametrize("phase", [2, 3])
def test_profile_expertise_and_session_documents(fed, tmp_path, monkeypatch, phase):
    """Save (what the function wrote) and Load of profile, expertise and session reach both sides equal."""
    (tmp_path / "other_core.py").write_text(_OTHER_CORE)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("other_core", None)
    module = importlib.import_module("other_core")
    module.ROOT = fed.root
    adopt.install(module, {
        "load_profile": adopt.Load("profile", key="agent"), "save_profile": adopt.Save("profile", key="agent"),
        "load_expertise": adopt.Load("expertise", key="agent"),
        "set_expertise": adopt.Save("expertise", key="agent"),
        "load_session": adopt.Load("session", key="session_id"),
        "start_session": adopt.Save("session", key="session_id"),
    })
    try:
        fed.phase(phase)
        module.save_profile("bob", "reviewer", {"careful": True})
        module.set_expertise("bob", ["sql", "python"])
        module.start_session("s-1", "Ship it", "bob")
        store = fed.store()
        assert store.load_profile("bob") == module.load_profile("bob")
        assert store.load_expertise("bob") == {**module.load_expertise("bob"), "domains": ["python", "sql"]}
        assert store.load_session("s-1")["roles"] == module.load_session("s-1")["roles"]
        module.set_expertise("bob", ["go"])             # a set replaced as a whole
        assert store.load_expertise("bob")["domains"] == ["go"]
        with structlog.testing.capture_logs() as logs:
            module.load_profile("bob"), module.load_expertise("bob"), module.load_session("s-1")
        assert _events(logs, "shadow_mismatch") == [] and _events(logs, "shadow_error") == []
        assert build_report(settings=config.settings()).consistent
    finally:
        adopt.uninstall(module)
        sys.modules.pop("other_core", None)


def test_phase_4_never_runs_adopted_code(fed, seed, tmp_path):
    """Phase 4 (pinned, or the flag): a declared call is refused and writes nothing; install refuses too."""
    fed.phase(3)
    poll_id = seed.create_poll("lead", "Four?", ["yes", "no"])
    before = seed.POLLS_FILE.read_bytes()
    fed.phase(4)
    with pytest.raises(adopt.AdoptedPhaseError, match=r"seed_core\.core\.load_polls: .*phase 4"):
        seed.vote(poll_id, "bob", "yes")
    with pytest.raises(adopt.AdoptedPhaseError):
        seed.send("alice", "bob", "hello")
    assert seed.POLLS_FILE.read_bytes() == before and not (fed.root / "nodes" / "bob").exists()
    assert fed.store().load_poll(poll_id)["votes"] == {}
    adopt.uninstall(seed)
    with pytest.raises(adopt.AdoptedPhaseError, match="adopting seed_core.core"):
        adopt.install(seed, DECLARATIONS)
    assert not adopt.installed(seed)
    fed.phase(3)


@pytest.mark.sqlite_only
def test_an_unpinned_process_refuses_to_start_when_the_flag_is_at_4(fed, tmp_path):
    """A process following the flag, started when the fleet is in phase 4, refuses at import, naming why."""
    fed.phase(3)
    assert rollout.set_phase(4, force=True, reason="test: the fleet finished", settings=config.settings()).applied
    try:
        proc = _spawn(fed, "import seed_core.adoption\nfrom seed_core import core\n", phase=None, **FAST)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode != 0
        assert "AdoptedPhaseError" in err and "phase 4" in err and "seed_core.core" in err
    finally:
        rollout.set_phase(3, force=True, reason="test: back", settings=config.settings())
