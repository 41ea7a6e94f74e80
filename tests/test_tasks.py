"""The task registry (issue 28, CONTRACT "The task registry"): the API in every phase on both engines,
claims by concurrent processes across `rollout set` steps, migrate/report/sync/prune on a tree with tasks."""

from __future__ import annotations

import json
import time

import pytest

from federation import tasks
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

        migrate(fed.root)
        fed.phase(phase)
    with pytest.raises(ValidationError, match="cycle"):
        tasks.create_task("lead", "c", depends_on=[b])
    assert tasks.claim_task("bob") is None  # neither can start
    assert len(tasks.list_tasks()) == 2
