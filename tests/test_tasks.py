"""The task registry (issue 28, CONTRACT "The task registry"): the API in every phase on both engines,
claims by concurrent processes across `rollout set` steps, migrate/report/sync/prune on a tree with tasks."""

from __future__ import annotations

import json
import time

import pytest

from federation import config, tasks
from federation.errors import ConflictError, NotFoundError, ValidationError

from structlog.testing import capture_logs

PHASES = (1, 2, 3, 4)


@pytest.fixture(autouse=True)
def _sides_agree():
    """In the dual phases both sides of every task call agree: no shadow error or mismatch is published."""
    with capture_logs() as logs:
        yield
    shadow = [e for e in logs if e["event"] in ("shadow_error", "shadow_mismatch")]
    assert shadow == [], shadow
KEYS = {"id", "title", "description", "creator", "assignee", "depends_on", "status", "claimed_by", "lease_until",
        "attempt", "result", "payload", "created_at", "updated_at"}


@pytest.mark.parametrize("phase", PHASES)
def test_a_task_is_created_claimed_and_completed_in_every_phase(fed, phase):
    """create -> claim (leased, attempt 1) -> complete (done, result kept); the dict has the contract's keys."""
    fed.phase(phase)
    tid = tasks.create_task("alice", "write the report", description="two pages", payload={"pages": 2})
    task = tasks.get_task(tid)
    assert set(task) == KEYS
    assert (task["status"], task["attempt"], task["claimed_by"], task["payload"]) == ("open", 0, None, {"pages": 2})
    claimed = tasks.claim_task("bob", lease=60)
    assert (claimed["id"], claimed["status"], claimed["claimed_by"], claimed["attempt"]) == (tid, "claimed", "bob", 1)
    assert claimed["lease_until"] > claimed["updated_at"]
    assert tasks.claim_task("carol") is None  # one claimer at a time
    done = tasks.complete_task("bob", tid, result={"ok": True})
    assert (done["status"], done["result"], done["lease_until"]) == ("done", {"ok": True}, None)
    assert tasks.get_task(tid) == done
    assert tasks.claim_task("carol") is None  # done is final


@pytest.mark.parametrize("phase", PHASES)
def test_dependencies_assignees_release_and_paging(fed, phase):
    """A task waits for its dependencies; an assigned task is its assignee's; release opens it again;
    list_tasks filters by status and assignee and pages with after."""
    fed.phase(phase)
    first = tasks.create_task("lead", "first")
    second = tasks.create_task("lead", "second", depends_on=[first])
    mine = tasks.create_task("lead", "for dora", assignee="dora")
    got = tasks.claim_task("bob")
    assert got["id"] == first  # the oldest takeable; second waits for first, the third is dora's
    assert tasks.claim_task("carol") is None
    assert tasks.claim_task("dora")["id"] == mine
    tasks.release_task("bob", first)
    assert tasks.get_task(first)["status"] == "open"
    again = tasks.claim_task("carol")
    assert (again["id"], again["attempt"]) == (first, 2)
    tasks.complete_task("carol", first, "done it")
    assert tasks.claim_task("bob")["id"] == second
    assert [t["id"] for t in tasks.list_tasks()] == [first, second, mine]
    assert [t["id"] for t in tasks.list_tasks(status="claimed")] == [second, mine]
    assert [t["id"] for t in tasks.list_tasks(status="done")] == [first]
    assert [t["id"] for t in tasks.list_tasks(assignee="dora")] == [mine]
    assert [t["id"] for t in tasks.list_tasks(limit=1, after=first)] == [second]


@pytest.mark.parametrize("phase", PHASES)
def test_a_lease_that_ends_opens_the_task_again_with_the_next_attempt(fed, phase):
    """Not completed in time: open again (no claimer shown), redelivered with attempt + 1; the late claimer
    can neither complete nor release it."""
    fed.phase(phase)
    tid = tasks.create_task("lead", "flaky")
    assert tasks.claim_task("bob", lease=0.3)["attempt"] == 1
    time.sleep(0.4)
    view = tasks.get_task(tid)
    assert (view["status"], view["claimed_by"], view["lease_until"]) == ("open", None, None)
    assert [t["id"] for t in tasks.list_tasks(status="open")] == [tid]
    with pytest.raises(ConflictError, match="lease"):
        tasks.complete_task("bob", tid, "late")
    again = tasks.claim_task("carol", lease=60)
    assert (again["id"], again["attempt"], again["claimed_by"]) == (tid, 2, "carol")
    with pytest.raises(ConflictError, match="not claimed by 'bob'"):
        tasks.release_task("bob", tid)


@pytest.mark.parametrize("phase", (1, 3))
def test_bad_input_gets_typed_errors_and_writes_nothing(fed, phase):
    """Unknown ids, wrong types, an oversized title, an unknown dependency, wrong claimers: typed errors."""
    fed.phase(phase)
    tid = tasks.create_task("alice", "real")
    bad = [
        (lambda: tasks.get_task("nope"), NotFoundError),
        (lambda: tasks.complete_task("bob", "nope"), NotFoundError),
        (lambda: tasks.release_task("bob", "nope"), NotFoundError),
        (lambda: tasks.create_task("alice", "x" * 5000), ValidationError),
        (lambda: tasks.create_task("alice", ""), ValidationError),
        (lambda: tasks.create_task("alice", 7), ValidationError),
        (lambda: tasks.create_task("../evil", "t"), ValidationError),
        (lambda: tasks.create_task("alice", "t", depends_on="abc"), ValidationError),
        (lambda: tasks.create_task("alice", "t", depends_on=["missing"]), ValidationError),
        (lambda: tasks.create_task("alice", "t", depends_on=[tid, tid]), ValidationError),
        (lambda: tasks.create_task("alice", "t", payload=object()), ValidationError),
        (lambda: tasks.create_task("alice", "t", payload="x" * 70_000), ValidationError),
        (lambda: tasks.create_task("alice", "t", assignee=""), ValidationError),
        (lambda: tasks.claim_task("bob", lease=0), ValidationError),
        (lambda: tasks.claim_task("bob", lease="5"), ValidationError),
        (lambda: tasks.list_tasks(status="lost"), ValidationError),
        (lambda: tasks.list_tasks(after="nope"), ValidationError),
        (lambda: tasks.list_tasks(limit=0), ValidationError),
        (lambda: tasks.complete_task("bob", tid), ConflictError),  # not claimed
    ]
    for call, error in bad:
        with pytest.raises(error):
            call()
    assert [t["id"] for t in tasks.list_tasks()] == [tid]
    tasks.claim_task("bob")
    with pytest.raises(ConflictError, match="claimed by 'bob'"):
        tasks.complete_task("carol", tid)
    tasks.complete_task("bob", tid)
    with pytest.raises(ConflictError, match="done already"):
        tasks.complete_task("bob", tid)


@pytest.mark.parametrize("phase", (1, 3))
def test_a_dependency_on_a_cycle_is_refused(fed, phase):
    """Two tasks that depend on each other (hand-edited files, imported): a new task that depends on them could
    never run, and is refused naming the cycle."""
    fed.phase(1)
    a = tasks.create_task("lead", "a")
    b = tasks.create_task("lead", "b", depends_on=[a])
    path = fed.root / "shared" / "tasks" / f"{a}.json"
    doc = json.loads(path.read_text())
    path.write_text(json.dumps({**doc, "depends_on": [b]}))
    if phase > 1:
        from federation.transfer.migrate import migrate

        migrate(fed.root, settings=config.settings())
        fed.phase(phase)
    with pytest.raises(ValidationError, match="cycle"):
        tasks.create_task("lead", "c", depends_on=[b])
    assert tasks.claim_task("bob") is None  # neither can start
    assert len(tasks.list_tasks()) == 2


def _cli(fed, *args: str):
    from click.testing import CliRunner

    from federation.cli import main

    return CliRunner().invoke(main, [*args, "--root", str(fed.root), "--db", fed.db_url or str(fed.db_path)])


def test_migrate_report_and_sync_know_tasks(fed):
    """A legacy tree with tasks (open, claimed, done; one hand-broken): migrate imports them and lists the broken
    one; report compares them; sync repairs either side, both ways."""
    fed.phase(1)
    a = tasks.create_task("lead", "a", payload={"n": [1, 2]})
    b = tasks.create_task("lead", "b", depends_on=[a], assignee="bob")
    c = tasks.create_task("lead", "c")
    tasks.claim_task("carol")
    tasks.complete_task("carol", a, result=["x"])
    tasks.claim_task("bob")
    folder = fed.root / "shared" / "tasks"
    (folder / "broken.json").write_text(json.dumps({"title": "t", "creator": "lead", "created_at": "x",
                                                    "attempt": "three"}))
    result = _cli(fed, "migrate", "--json")
    out = json.loads(result.stdout)
    assert result.exit_code == 3, result.output
    assert out["entities"]["tasks"] == {"files": 3, "rows": 3}
    assert [i["reason"] for i in out["invalid"]] == ["field 'attempt' must be a number, found str"]
    (folder / "broken.json").unlink()
    assert _cli(fed, "report").exit_code == 0
    fed.phase(3)
    assert tasks.get_task(a)["result"] == ["x"] and tasks.get_task(b)["claimed_by"] == "bob"

    # the files drift (a hand edit): report names the task, sync --to db takes the files' version
    doc = json.loads((folder / f"{c}.json").read_text())
    (folder / f"{c}.json").write_text(json.dumps({**doc, "title": "c, edited"}))
    result = _cli(fed, "report", "--json")
    assert result.exit_code == 1 and json.loads(result.stdout)["entities"]["tasks"]["different"] == [c]
    assert _cli(fed, "sync", "--to", "db").exit_code == 0
    assert fed.store().load_task(c)["title"] == "c, edited"

    # the database moves alone (phase 4): sync --to files rewrites the task's file
    fed.phase(4)
    tasks.complete_task("bob", b, result="done")
    d = tasks.create_task("lead", "d")
    assert _cli(fed, "report").exit_code == 1
    result = _cli(fed, "sync", "--only", "tasks", "--to", "files", "--force", "--reason", "phase 4 wrote alone")
    assert result.exit_code == 0, result.output
    assert json.loads((folder / f"{b}.json").read_text())["status"] == "done"
    assert json.loads((folder / f"{d}.json").read_text())["title"] == "d"
    assert _cli(fed, "report").exit_code == 0


def test_an_unreadable_task_file_is_unknown_never_empty(fed):
    """A torn task file: report exits 3 naming it, and sync --to db neither deletes nor changes its row."""
    fed.phase(2)
    tid = tasks.create_task("lead", "kept")
    path = fed.root / "shared" / "tasks" / f"{tid}.json"
    path.write_text('{"id": "' + tid + '", "title": "ke')
    result = _cli(fed, "report", "--json")
    assert result.exit_code == 3 and [u["path"] for u in json.loads(result.stdout)["unknown"]] == [str(path)]
    assert _cli(fed, "sync", "--to", "db").exit_code == 3
    assert fed.store().load_task(tid)["title"] == "kept"


@pytest.mark.parametrize("phase", (1, 3))
def test_prune_removes_done_tasks_past_retention_on_both_sides(fed, phase):
    """`prune`: a task done before the cutoff goes (row and file); open, claimed and recent done ones stay,
    and report still agrees."""
    from datetime import datetime, timedelta, timezone

    from federation.operations.prune import prune

    fed.phase(1)
    old, recent, waiting = (tasks.create_task("lead", t) for t in ("old", "recent", "waiting"))
    for tid in (old, recent):
        tasks.claim_task("bob")
        tasks.complete_task("bob", tid)
    folder = fed.root / "shared" / "tasks"
    doc = json.loads((folder / f"{old}.json").read_text())
    (folder / f"{old}.json").write_text(json.dumps({**doc, "updated_at": "2020-01-01T00:00:00+00:00"}))
    assert _cli(fed, "migrate").exit_code == 0
    fed.phase(phase)
    dry = prune("30d", dry_run=True, settings=config.settings())
    assert (dry.removed["tasks"], dry.files["tasks"]) == (1, 1)
    assert (folder / f"{old}.json").exists()
    done = prune("30d", now=datetime.now(timezone.utc) + timedelta(seconds=1), settings=config.settings())
    assert (done.removed["tasks"], done.files["tasks"]) == (1, 1)
    assert sorted(p.stem for p in folder.iterdir()) == sorted([recent, waiting])
    assert fed.store().load_task(old) is None and fed.store().load_task(recent)["status"] == "done"
    assert _cli(fed, "report").exit_code == 0


async def _task_round(creator, worker, other) -> None:
    """The task tools, each acting as the calling agent: create, claim (the dependency first), refusals typed."""
    first = (await creator.ok("create_task", title="first", payload={"n": 1}))["task_id"]
    second = (await creator.ok("create_task", title="second", depends_on=[first]))["task_id"]
    assert (await creator.error("create_task", title="x", depends_on=["nope"])).startswith("invalid argument: ")
    assert "unknown argument" in await creator.error("create_task", title="x", creator="someone-else")
    got = (await worker.ok("claim_task", lease=60))["task"]
    assert (got["id"], got["claimed_by"], got["attempt"], got["payload"]) == (first, worker.name, 1, {"n": 1})
    assert (await other.ok("claim_task"))["task"] is None  # second waits for first
    assert (await other.error("complete_task", task_id=first)).startswith("refused: ")
    assert (await other.error("get_task", task_id="nope")).startswith("not found: ")
    done = (await worker.ok("complete_task", task_id=first, result={"ok": True}))["task"]
    assert (done["status"], done["result"]) == ("done", {"ok": True})
    assert (await other.ok("claim_task"))["task"]["id"] == second
    assert await other.ok("release_task", task_id=second) == {"ok": True}
    listed = await creator.ok("list_tasks", limit=1)
    assert [t["id"] for t in listed["tasks"]] == [first] and listed["next"] == first
    page = await creator.ok("list_tasks", status="open", after=listed["next"])
    assert [(t["id"], t["status"], t["creator"]) for t in page["tasks"]] == [(second, "open", creator.name)]
    assert (await creator.ok("get_task", task_id=second))["task"]["attempt"] == 1


def test_the_task_tools_over_stdio(fed):
    """Three real stdio servers (`federation serve --agent NAME`), the official MCP client: the task tools."""
    import anyio
    from test_mcp_server import agent_server

    async def scenario():
        async with agent_server(fed, "lead") as lead, agent_server(fed, "bob") as bob, \
                agent_server(fed, "carol") as carol:
            await _task_round(lead, bob, carol)

    anyio.run(scenario)


def test_the_task_tools_over_http(fed):
    """One real HTTP server, three agents by their bearer tokens: the same task tools, each as its token's agent."""
    import anyio
    from test_mcp_http import HttpServer, http_agent, tokens

    t = tokens(fed, "lead", "bob", "carol")
    with HttpServer(fed) as server:
        async def scenario():
            async with http_agent(server.url, t["lead"], "lead") as lead, \
                    http_agent(server.url, t["bob"], "bob") as bob, \
                    http_agent(server.url, t["carol"], "carol") as carol:
                await _task_round(lead, bob, carol)

        anyio.run(scenario)


CLAIMER = r"""
import json, os, sys, time
from federation import config, rollout, tasks
from federation.errors import ConflictError
me, go, stop = sys.argv[1], sys.argv[2], sys.argv[3]
tasks.list_tasks(limit=1)  # a first call: the process is in the fleet
while not os.path.exists(go) and not os.path.exists(stop):
    time.sleep(0.01)
claims, done, lost, phases, made, early = [], [], [], set(), [], []
last = None
while True:
    stopping = os.path.exists(stop)
    if not stopping and len(made) < 40:  # traffic in every phase: each claimer also makes tasks, in chains
        last = tasks.create_task(me, f"{me} {len(made)}", depends_on=[last] if last and len(made) % 3 else [])
        made.append(last)
    task = tasks.claim_task(me, lease=2)
    phases.add(rollout.phase_in_effect(config.settings())["phase"])
    if task is None:
        if stopping and not tasks.list_tasks(status="open") and not tasks.list_tasks(status="claimed"):
            break
        tasks.list_tasks(limit=5)  # a read: compared (and counted) in phases 2 and 3
        time.sleep(0.05)
        continue
    claims.append([task["id"], task["attempt"]])
    tasks.get_task(task["id"])  # a read: compared (and counted) in phases 2 and 3
    early += [d for d in task["depends_on"] if tasks.get_task(d)["status"] != "done"]
    if task["attempt"] == 1 and int(task["id"], 16) % 5 == 0:
        continue  # this claimer "dies" holding it: the lease ends, the task is claimed again
    try:
        tasks.complete_task(me, task["id"], result=me)
        done.append(task["id"])
    except ConflictError:  # the lease ended first (a slow machine): claimed again by someone
        lost.append(task["id"])
print(json.dumps({"claims": claims, "done": done, "lost": lost, "phases": sorted(phases), "made": made,
                  "early": early}))
"""


def test_four_claimer_processes_across_rollout_steps(fed):
    """4 processes create and claim tasks while the operator steps 1 -> 2 -> 3 -> 4 with `rollout set`: each
    claim of a task has its own attempt (never two holders at once), abandoned tasks come back after their
    lease with attempt + 1, no task is claimed before its dependencies are done, and each is completed once."""
    import subprocess
    import sys

    from _procs import wait_for
    from test_rollout import cli, status_json, unpinned_env

    from federation import rollout

    fed.phase(1)
    tasks.create_task("lead", "seed")
    assert cli(fed, "rollout", "set", "1", "--reason", "start").exit_code == 0
    assert cli(fed, "migrate").exit_code == 0
    fed.phase(3)  # this process stays out of the way: pinned in 3, no call while the fleet is in 4
    tasks.list_tasks(limit=1)
    rollout.RUNTIME.tick(announce_now=True)
    go, stop = fed.root.parent / "go", fed.root.parent / "stop"
    env = unpinned_env(fed, FEDERATION_FLAG_CHECK="0.2")
    procs = [subprocess.Popen([sys.executable, "-c", CLAIMER, f"w{i}", str(go), str(stop)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(4)]
    pids = {p.pid for p in procs}

    def fleet_in(phase: int) -> bool:
        mine = [p for p in status_json(fed)["fleet"] if p["pid"] in pids and p["alive"]]
        return len(mine) == 4 and all(p["phase"] == phase for p in mine)

    def step(phase: int, *extra: str, before_retry=None) -> None:
        for attempt in range(3):
            result = cli(fed, "rollout", "set", str(phase), *extra)
            if result.exit_code == 0:
                break
            assert attempt < 2 and before_retry, result.output
            before_retry()
        wait_for(lambda: fleet_in(phase), 30, interval=0.2, what=f"the claimers in phase {phase}")

    try:
        wait_for(lambda: fleet_in(1), 60, interval=0.2, what="4 claimers in phase 1")
        go.touch()
        time.sleep(1.0)
        step(2)
        assert cli(fed, "sync", "--to", "db").exit_code == 0  # what phase 1 wrote
        since = rollout._io.utcnow()
        wait_for(lambda: rollout.totals(since=since, settings=config.settings())["comparisons"] >= 5, 30, interval=0.2, what="comparisons")
        step(3, "--since", since.isoformat(), "--min-comparisons", "5", before_retry=lambda: cli(fed, "migrate"))
        in_three = rollout._io.utcnow()
        wait_for(lambda: rollout.totals(since=in_three, settings=config.settings())["comparisons"] >= 5, 30, interval=0.2, what="comparisons")
        step(4, "--since", in_three.isoformat(), "--min-comparisons", "5",
             before_retry=lambda: cli(fed, "sync", "--to", "files"))
        time.sleep(1.0)
    finally:
        stop.touch()
        outs = [p.communicate(timeout=120) for p in procs]
    for (out, err), p in zip(outs, procs):
        assert p.returncode == 0, err[-3000:]
    results = [json.loads(out.splitlines()[-1]) for out, _ in outs]
    assert all(r["phases"] == [1, 2, 3, 4] for r in results), [r["phases"] for r in results]
    made = {tid for r in results for tid in r["made"]}
    claims = [tuple(c) for r in results for c in r["claims"]]
    assert len(claims) == len(set(claims)), "one attempt of a task was held by two claimers"
    abandoned = {tid for tid, attempt in claims if attempt == 1 and int(tid, 16) % 5 == 0}
    assert abandoned and all((tid, 2) in claims for tid in abandoned)  # redelivered after the lease
    assert [e for r in results for e in r["early"]] == []  # never before its dependencies were done
    done = [tid for r in results for tid in r["done"]]
    assert len(done) == len(set(done)) and set(done) >= made  # each completed once, all of them
    final = {t["id"]: t for t in fed.store().load_tasks_page()}
    assert all(final[tid]["status"] == "done" for tid in made)


def test_the_dashboard_counts_and_compares_tasks(fed):
    """The dashboard's page knows tasks from their entity description: their rows among the tables, their
    phase-2 comparisons among the entities (a task edited behind the shim's back: one mismatch)."""
    from federation import config, rollout
    from federation.apps.dashboard import DashboardData

    fed.phase(2)
    tid = tasks.create_task("lead", "watched")
    tasks.create_task("lead", "another")
    path = fed.root / "shared" / "tasks" / f"{tid}.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "title": "edited"}))
    with capture_logs() as logs:  # (the autouse check sees none of these three: they are this test's own)
        for _ in range(3):
            tasks.get_task(tid)
    assert [(e["event"], e["op"]) for e in logs if e["event"] == "shadow_mismatch"] == [("shadow_mismatch", "load_task")] * 3
    rollout.flush()
    page = DashboardData(config.settings()).page("24h")
    assert page["tables"]["tasks"] == 2, page["problems"]
    counted = page["status"]["consistency"]["tasks"]
    # (at least: a process's counts of the hour are its own since it started, an earlier test's included)
    assert counted["comparisons"] >= counted["mismatches"] >= 3, counted


def test_a_version_4_database_is_upgraded_and_keeps_its_rows(fed, monkeypatch):
    """A database made before the task registry (schema version 4) gets the tasks table on first open by this
    version (version 5 recorded once), its rows kept; tasks then work on it."""
    from federation import messaging
    from federation.stores import schema
    from federation.stores.sqlstore import forget_stores

    fed.phase(4)
    with monkeypatch.context() as m:
        m.setattr(schema, "MIGRATIONS", [v for v in schema.MIGRATIONS if v[0] <= 4])
        m.setattr(schema, "LATEST", 4)
        messaging.send_message("alice", "bob", "before the upgrade")
        assert fed.store().db.schema_version() == 4
        assert "tasks" not in {r[0] for r in fed.store().db.fetchall(
            "SELECT table_name FROM information_schema.tables" if fed.engine == "postgresql"
            else "SELECT name FROM sqlite_master WHERE type = 'table'")}
    forget_stores()
    tid = tasks.create_task("lead", "after the upgrade")
    db = fed.store().db
    assert db.fetchall("SELECT version FROM schema_version ORDER BY version") == [(v,) for v, _ in schema.MIGRATIONS]  # each once
    assert [m["content"] for m in messaging.check_inbox("bob")] == ["before the upgrade"]
    assert tasks.claim_task("bob")["id"] == tid
