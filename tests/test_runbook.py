"""The runbook (docs/rollout-runbook.md) walked as written, 1 -> 4 -> 1, beside live agents (issue 29).

Three agent processes follow the live flag throughout: each sends keyed messages to the others,
receives and acknowledges its own, and sets its context.  The operator's commands run in the
runbook's order; each must pass on its first try, except where a real difference exists -- and then
the runbook's own next command repairs it (after the catch-up `migrate`, a `report` that lists a
message read in phase 1 in between, repaired by `sync --to db`).  At the end: no message lost,
none received twice, no agent call failed.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import datetime, timezone

import pytest

from federation import config, rollout

from federation.domain.generate import generate
from test_rollout import REPO, cli, status_json, unpinned_env, wait_for

AGENT = r"""
import json, os, sys, time
from federation import context, messaging
from federation.errors import FederationError
me, peers, stop, out = sys.argv[1], sys.argv[2].split(","), sys.argv[3], sys.argv[4]
sent, got, errors, n = [], [], [], 0
while not os.path.exists(stop):
    try:
        content = f"{me}-{n}"
        messaging.send_message(me, peers[n % len(peers)], content, idempotency_key=content)
        sent.append(content)
        for m in messaging.receive(me, lease=10, limit=20):
            got.append(m["content"])
            messaging.ack(me, [m["id"]])
        context.set_context(me, f"tick {n}")
    except FederationError as exc:
        errors.append(f"{type(exc).__name__}: {exc}"[:300])
    n += 1
    time.sleep(0.03)
deadline = time.time() + 20  # the last messages: received once the others stopped sending
while time.time() < deadline:
    batch = messaging.receive(me, lease=10, limit=100)
    if not batch:
        time.sleep(0.3)
        continue
    for m in batch:
        got.append(m["content"])
        messaging.ack(me, [m["id"]])
with open(out, "w") as fh:
    json.dump({"sent": sent, "got": got, "errors": errors}, fh)
"""

NAMES = ("walk-a", "walk-b", "walk-c")


@pytest.mark.sqlite_only
def test_the_runbook_walked_as_written_with_live_agents_passes_each_step(fed, tmp_path):
    generate(fed.root, agents=6, messages=200, polls=2, sessions=1)
    walk: list[tuple[str, int]] = []

    def run(*args: str, expect: int = 0):
        result = cli(fed, *args)
        walk.append((" ".join(args), result.exit_code))
        assert result.exit_code == expect, (args, result.output[-3000:], walk)
        return result

    def fleet_in(phase: int) -> None:
        wait_for(lambda: status_json(fed)["fleet_summary"]["all_in"] == phase, 60, interval=0.2,
                 what=f"every live process in phase {phase}")

    def comparisons_from_now(n: int) -> None:
        start = datetime.now(timezone.utc)
        wait_for(lambda: rollout.totals(since=start, settings=config.settings())["comparisons"] >= n, 60, interval=0.5,
                 what=f"{n} comparisons counted")

    run("rollout", "set", "1")
    stop = tmp_path / "stop"
    agents = [subprocess.Popen([sys.executable, "-c", AGENT, me, ",".join(n for n in NAMES if n != me), str(stop),
                                str(tmp_path / f"{me}.json")], env=unpinned_env(fed), cwd=str(REPO),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for me in NAMES]
    try:
        time.sleep(2.0)  # the agents work in phase 1
        run("migrate")
        run("rollout", "set", "2")
        fleet_in(2)
        run("migrate")  # the catch-up
        if cli(fed, "report").exit_code != 0:  # a message read in phase 1 since the first migrate: a real difference
            run("sync", "--to", "db")  # the runbook's repair in phase 2
        run("report")
        comparisons_from_now(100)
        run("rollout", "set", "3")
        fleet_in(3)
        comparisons_from_now(100)
        run("rollout", "set", "4")
        fleet_in(4)
        time.sleep(1.0)
        run("sync", "--to", "files")  # step 6's rollback, as written
        run("rollout", "set", "3")
        fleet_in(3)
        run("sync", "--to", "files")
        run("report")
        run("rollout", "set", "2")
        fleet_in(2)
        run("rollout", "set", "1")
        fleet_in(1)
        time.sleep(1.0)
    finally:
        stop.touch()
        errs = [a.communicate(timeout=120)[1] for a in agents]
    assert [a.returncode for a in agents] == [0, 0, 0], [e[-2000:] for e in errs]
    sent, got, errors = [], [], []
    for me in NAMES:
        data = json.loads((tmp_path / f"{me}.json").read_text())
        sent += data["sent"]
        got += data["got"]
        errors += data["errors"]
    assert errors == []
    assert len(sent) > 100  # the agents really worked through the walk
    assert sorted(got) == sorted(sent)  # every message received, and once
