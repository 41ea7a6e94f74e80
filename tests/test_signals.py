"""Long-running commands stop cleanly on SIGTERM (what service managers and `kill` send): the process exits
through SystemExit, so its atexit handlers run -- the rollout runtime writes the counts it holds and withdraws
the process's fleet announcement.  The library itself installs no signal handler."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _procs import wait_for as _wait_for

from federation import context

REPO = Path(__file__).resolve().parent.parent




def _counted(root: Path, pid: int, entity: str) -> int:
    """Comparisons of *entity* that process *pid* wrote under control/counts/ (every hour it wrote)."""
    total = 0
    for path in (root / "control" / "counts").glob(f"*/{socket.gethostname()}-{pid}-*.json"):
        total += sum(c["comparisons"] for c in json.loads(path.read_text())["cells"] if c["entity"] == entity)
    return total


class RawServer:
    """`federation serve` driven over raw stdio (JSON-RPC lines), its stdin kept open."""

    def __init__(self, fed, agent: str, env: dict[str, str]):
        self.proc = subprocess.Popen([sys.executable, "-m", "federation", "serve", "--agent", agent], text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     env=env, cwd=str(REPO))
        self.ids = 0
        self.request("initialize", {"protocolVersion": "2025-06-18", "capabilities": {},
                                    "clientInfo": {"name": "raw", "version": "0"}})
        self.send({"jsonrpc": "2.0", "method": "notifications/initialized"})

    def send(self, message: dict) -> None:
        self.proc.stdin.write(json.dumps(message) + "\n")
        self.proc.stdin.flush()

    def request(self, method: str, params: dict) -> dict:
        self.ids += 1
        self.send({"jsonrpc": "2.0", "id": self.ids, "method": method, "params": params})
        reply = json.loads(self.proc.stdout.readline())
        assert reply["id"] == self.ids and "error" not in reply, reply
        return reply["result"]

    def tool(self, name: str, **arguments) -> dict:
        result = self.request("tools/call", {"name": name, "arguments": arguments})
        assert result["isError"] is False, result
        return result["structuredContent"]


@pytest.mark.parametrize("stop", ["SIGTERM", pytest.param("SIGINT", marks=pytest.mark.sqlite_only)])
def test_serve_stopped_by_a_signal_flushes_its_counts_and_withdraws_its_announcement(fed, stop):
    """A `federation serve` in phase 2 serves shadow-compared reads, then gets SIGTERM (or Ctrl-C's SIGINT)
    with its stdin still open: it exits 0 within seconds, every compared read is in its counts file (the
    periodic flush is made rare, so only the exit's flush can have written the last ones) and its fleet
    file is gone."""
    context.set_context("probe", "on both sides")
    env = {**fed.subprocess_env(2), "FEDERATION_COUNTS_FLUSH": "3600"}
    server = RawServer(fed, "alice", env)
    pid = server.proc.pid
    fleet_file = fed.root / "control" / "fleet" / f"{socket.gethostname()}-{pid}.json"
    try:
        for _ in range(3):
            assert server.tool("get_context", agent="probe")["context"]["text"] == "on both sides"
        # the runtime's first flush (then none for an hour): what is counted after it only the exit writes
        first = _wait_for(lambda: _counted(fed.root, pid, "context"), 15, what="the first flush of the counts")
        assert first <= 3
        for _ in range(5):
            server.tool("get_context", agent="probe")
        assert fleet_file.exists()
        server.proc.send_signal(getattr(signal, stop))
        signalled = time.monotonic()
        server.proc.wait(timeout=20)  # stdin still open: the signal alone ends it
        stopped_in = time.monotonic() - signalled
        _out, err = server.proc.communicate(timeout=20)
    finally:
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.communicate()
    assert server.proc.returncode == 0, err[-3000:]
    assert stopped_in < 10, stopped_in
    assert _counted(fed.root, pid, "context") == 8
    assert not fleet_file.exists()
    events = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert any(e["event"] == "mcp_server_stopped" and e.get("signal") == stop for e in events), err[-2000:]


def test_the_library_installs_no_signal_handler(fed):
    """Importing and using the library (the API, the MCP server object, the CLI module) leaves SIGTERM and
    SIGINT as Python set them: only a CLI command that runs long installs its handler."""
    code = """
import signal
before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
from federation import cli, context, governance
from federation.apps import mcp_server
from federation.transfer import sync
context.set_context("probe", "hello")
governance.create_poll("lead", "Q?", ["a", "b"])
mcp_server.build_server("alice")
assert {s: signal.getsignal(s) for s in before} == before, signal.getsignal(signal.SIGTERM)
print("untouched")
"""
    assert fed.run_py(code).stdout.strip().splitlines()[-1] == "untouched"


@pytest.mark.sqlite_only
def test_dashboard_stopped_by_sigterm_exits_cleanly(fed):
    """uvicorn stops gracefully on SIGTERM and then raises it again under the previous handler: with the
    CLI's handler that is a clean exit (status 0, atexit handlers run), not a death by the signal."""
    proc = subprocess.Popen([sys.executable, "-m", "federation", "dashboard", "--port", "0"], text=True,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=fed.subprocess_env(3), cwd=str(REPO))
    try:
        for line in proc.stderr:
            if "federation dashboard on" in line:
                break
        else:
            raise AssertionError("the dashboard did not start")
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    assert proc.returncode == 0
