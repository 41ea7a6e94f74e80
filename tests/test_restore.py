"""`federation restore --from PATH` (issue 30): a backup put in place under traffic loses nothing, because the
flag goes to the phase whose authoritative side is the newest before any repair is named."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from federation import config, governance
from federation.domain.generate import generate
from federation.operations.backup import backup
from federation.transfer.migrate import migrate

from test_rollout import cli, run_cli, unpinned_env

SENDER = r"""
import json, os, sys, time
from federation import governance, messaging
stop, log, poll = sys.argv[1], sys.argv[2], sys.argv[3]
n = 0
with open(log, "a") as out:
    while not os.path.exists(stop):
        mid = messaging.send_message("agent-000", "agent-001", f"m{n}")
        option = f"option-{n % 2}"
        governance.vote(poll, "agent-002", option)
        out.write(json.dumps([mid, option]) + "\n"); out.flush()
        n += 1
        time.sleep(0.01)
"""


def _flag(fed, phase: int) -> None:
    result = cli(fed, "rollout", "set", str(phase), "--force", "--reason", "test set-up")
    assert result.exit_code == 0, result.output


def _written(log) -> list[list[str]]:
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


@pytest.mark.sqlite_only
@pytest.mark.parametrize("phase", [2, 3])
def test_restore_under_traffic_loses_nothing(fed, phase, tmp_path):
    """Agents send and vote; a backup is taken mid-traffic; they go on, then stop. `restore` is refused while
    one lives; after they stop it restores, the flag is at 2 (from 3: the files are newer), the next command it
    names (`sync --to db`) brings every later message and the last vote into the database, and `report`
    exits 0."""
    generate(fed.root, agents=3, messages=4, polls=1, sessions=0)
    assert migrate(settings=config.settings()).exit_code == 0
    _flag(fed, phase)
    poll = next(iter(json.loads((fed.root / "shared" / "polls.json").read_text())))  # this process stays out of the fleet
    stop, log = tmp_path / "stop", tmp_path / "sent.jsonl"
    sender = subprocess.Popen([sys.executable, "-c", SENDER, str(stop), str(log), poll],
                              env=unpinned_env(fed), stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while (not log.exists() or len(_written(log)) < 20) and time.monotonic() < deadline:
            time.sleep(0.05)
        backup(tmp_path / "backup.db", settings=config.settings())
        before_backup = len(_written(log))
        time.sleep(0.5)
        refused = run_cli(fed, "restore", "--from", str(tmp_path / "backup.db"))
        assert refused.returncode == 1 and "refused" in refused.stderr, refused.stderr
    finally:
        stop.touch()
        _, err = sender.communicate(timeout=60)
    assert sender.returncode == 0, err[-2000:]
    sent = _written(log)
    assert len(sent) > before_backup + 5  # traffic went on after the backup

    done = run_cli(fed, "restore", "--from", str(tmp_path / "backup.db"), "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["phase_before"] == phase and result["phase_after"] == 2
    assert result["next"][0] == "federation sync --to db"
    for command in result["next"][:2]:  # as an operator would: the named commands, in order
        assert run_cli(fed, *command.split()[1:]).returncode == 0, command
    fed.phase(2)
    store = fed.store()
    unread = {r[0] for r in store.db.fetchall("SELECT id FROM messages WHERE read_at IS NULL")}
    assert {mid for mid, _ in sent} <= unread  # nothing sent after the backup is lost
    assert governance.get_poll(poll)["votes"]["agent-002"] == sent[-1][1]  # the last vote, not the backup's
    history = [json.loads(x) for x in (fed.root / "control" / "history.jsonl").read_text().splitlines()]
    assert history[-1]["to"] == 2 and ("restore of" in history[-1]["reason"]) == (phase == 3)


@pytest.mark.sqlite_only
def test_restore_in_phase_4_of_a_backup_taken_in_phase_4_keeps_4(fed, tmp_path):
    generate(fed.root, agents=2, messages=2, polls=1, sessions=0)
    assert migrate(settings=config.settings()).exit_code == 0
    _flag(fed, 4)
    odd = tmp_path / "backup 100%41 #1.db"  # read as a URI by hand, this name opened another file
    backup(odd, settings=config.settings())
    done = run_cli(fed, "restore", "--from", str(odd), "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["phase_after"] == 4


@pytest.mark.sqlite_only
def test_restore_refuses_what_is_not_a_backup(fed, tmp_path):
    fed.root.mkdir(parents=True, exist_ok=True)
    bad = tmp_path / "not.db"
    bad.write_text("hello")
    for path in (bad, tmp_path / "missing.db"):
        result = run_cli(fed, "restore", "--from", str(path))
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert run_cli(fed, "restore", "--from", str(bad), "--reason", "x").returncode == 2


@pytest.mark.postgresql_only
def test_restore_on_postgresql_names_its_tool(fed, tmp_path):
    fed.root.mkdir(parents=True, exist_ok=True)
    result = run_cli(fed, "restore", "--from", str(tmp_path / "x.dump"))
    assert result.returncode == 1 and "pg_restore" in result.stderr
